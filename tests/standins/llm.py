"""A local HTTP server speaking the Gemini and OpenAI REST wire formats (the providers' stand-in).

* Gemini: ``POST /v1beta/models/{model}:generateContent`` (key in ``x-goog-api-key``), reply
  ``{candidates: [{content: {parts: [{text}]}, finishReason}], usageMetadata: {...}}``, errors
  ``{error: {code, message, status}}``.
* OpenAI: ``POST /v1/chat/completions`` (``Authorization: Bearer``), reply a ``chat.completion``
  object with ``choices[0].message.content`` and ``usage``, errors ``{error: {message, type, code}}``.

What the "model" answers is a function of the request (``brain``: system text, user text, JSON
schema -> reply text). ``script`` queues failures to serve first: an HTTP status (429, 500, ...)
or ``"malformed"`` (a 200 whose body is not the provider's JSON). Every request is recorded.
"""

from __future__ import annotations

import json
import re
import threading
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Brain = Callable[[str, str, dict[str, Any]], str]
_TICKERS = re.compile(r"^TICKERS: (.*)$", re.M)


def neutral_brain(system: str, user: str, schema: dict[str, Any]) -> str:
    """A well-behaved model: a valid, mildly positive score for every ticker the prompt lists."""
    m = _TICKERS.search(user)
    tickers = json.loads(m.group(1)) if m else []
    return json.dumps({"scores": [{"ticker": t, "score": 0.25, "relevance": 0.8, "impact": 0.3} for t in tickers]})


class Seen:
    def __init__(self, provider: str, path: str, headers: dict[str, str], body: dict[str, Any]) -> None:
        self.provider = provider
        self.path = path
        self.headers = headers
        self.body = body


class LlmStandIn:
    def __init__(self, brain: Brain = neutral_brain, *, key: str = "test-key") -> None:
        self.brain = brain
        self.key = key
        self.script: deque[int | str] = deque()
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def calls(self) -> int:
        with self._lock:
            return len(self.seen)

    def start(self) -> LlmStandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> LlmStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            wbufsize = 1 << 16  # headers and body leave in one write (no Nagle / delayed-ACK stall)
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
                headers = {k.lower(): v for k, v in self.headers.items()}
                m = re.fullmatch(r"/v1beta/models/([^/:]+):generateContent", self.path.split("?")[0])
                provider = "gemini" if m else "openai" if self.path.startswith("/v1/chat/completions") else ""
                with standin._lock:
                    standin.seen.append(Seen(provider, self.path, headers, body))
                    step = standin.script.popleft() if standin.script else None
                if not provider:
                    return self._send(404, {"error": {"code": 404, "message": "no such path", "status": "NOT_FOUND"}})
                if provider == "gemini":
                    authorized = headers.get("x-goog-api-key") == standin.key
                else:
                    authorized = headers.get("authorization") == f"Bearer {standin.key}"
                if not authorized:
                    return self._error(provider, 401, "API key not valid")
                if step == "malformed":
                    return self._send(200, b"<html>upstream proxy error</html>")
                if isinstance(step, int):
                    return self._error(provider, step, f"scripted failure {step}")
                if provider == "gemini":
                    system = " ".join(p["text"] for p in body.get("systemInstruction", {}).get("parts", []))
                    user = " ".join(p["text"] for c in body["contents"] for p in c["parts"])
                    gen = body.get("generationConfig", {})
                    schema = gen.get("responseJsonSchema") or gen.get("responseSchema") or {}
                    text = standin.brain(system, user, schema)
                    return self._send(
                        200,
                        {
                            "candidates": [
                                {"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP"}
                            ],
                            "usageMetadata": {
                                "promptTokenCount": len(user.split()),
                                "candidatesTokenCount": len(text.split()),
                                "totalTokenCount": len(user.split()) + len(text.split()),
                            },
                            "modelVersion": m.group(1) if m else "",
                        },
                    )
                msgs = body["messages"]
                system = " ".join(x["content"] for x in msgs if x["role"] == "system")
                user = " ".join(x["content"] for x in msgs if x["role"] == "user")
                schema = body.get("response_format", {}).get("json_schema", {}).get("schema", {})
                text = standin.brain(system, user, schema)
                return self._send(
                    200,
                    {
                        "id": f"chatcmpl-{standin.calls}",
                        "object": "chat.completion",
                        "created": 1_700_000_000,
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": text, "refusal": None},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {
                            "prompt_tokens": len(user.split()),
                            "completion_tokens": len(text.split()),
                            "total_tokens": len(user.split()) + len(text.split()),
                        },
                    },
                )

            def _error(self, provider: str, code: int, message: str) -> None:
                status = {401: "UNAUTHENTICATED", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}
                if provider == "gemini":
                    self._send(code, {"error": {"code": code, "message": message, "status": status.get(code, "ERROR")}})
                else:
                    kind = {401: "invalid_api_key", 429: "rate_limit_exceeded"}.get(code, "server_error")
                    self._send(code, {"error": {"message": message, "type": kind, "param": None, "code": kind}})

            def _send(self, code: int, payload: dict[str, Any] | bytes) -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if code == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(data)

        return Handler
