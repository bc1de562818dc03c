"""`tapeline web` on the demo's data in headless Chromium, and its API (panels, guarded control) in-process."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from nats.aio.client import Client

from tapeline.bus.connection import NatsSettings, connect
from tapeline.bus.publisher import Publisher
from tapeline.projections.duckdb import ProjectionDb
from tapeline.projections.tables import BARS, FILLS
from tapeline.schemas.events import (
    AgentSignal,
    Bar,
    CircuitBreakerTripped,
    DecisionEnvelope,
    OperatorAction,
    OrderFilled,
    Synthesis,
    Target,
)
from tapeline.schemas.ids import new_event_id
from tapeline.schemas.subjects import OPS, RISK
from tapeline.session import running_embedded
from tapeline.web import data
from tapeline.web.control import Controls
from tapeline.web.data import Reader
from tapeline.web.server import WebServer
from tests.helpers import TAPELINE, start_tapeline, stored, wait_until, write_config
from tests.web_browser import Browser

DEMO_TICKS = "8000"


def _decision(ticker: str, verdict: str, reasoning: str) -> DecisionEnvelope:
    now = time.time_ns()
    return DecisionEnvelope(
        event_id=new_event_id(now),
        ts_event=now,
        ts_init=now,
        source="test",
        target=Target(ticker=ticker, trade_date="2026-01-01"),
        synthesis=Synthesis(verdict=verdict, confidence=0.87, ensemble_score=0.66, reasoning=reasoning),  # type: ignore[arg-type]
        agent_signals=[AgentSignal(agent="momentum", domain="technical", signal="BULLISH", confidence=0.9)],
    )


async def _url_in(log: Path, proc: subprocess.Popen[bytes]) -> str:
    found: list[str] = []

    def served() -> bool:
        assert proc.poll() is None, log.read_text()
        found[:] = re.findall(r"http://127\.0\.0\.1:\d+/", log.read_text())
        return bool(found)

    await wait_until(served, timeout=120)
    return found[0]


async def test_a_decision_published_during_the_test_is_on_the_page_within_a_second(tmp_path: Path) -> None:
    cfg = tmp_path / "tapeline.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\nmetrics_port = 0\n')
    demo = await asyncio.to_thread(
        subprocess.run, [*TAPELINE, "demo", "-c", str(cfg), "--ticks", DEMO_TICKS], capture_output=True, timeout=300
    )
    assert demo.returncode == 0, demo.stdout.decode()[-2000:] + demo.stderr.decode()[-2000:]
    log = tmp_path / "web.log"
    web = start_tapeline("web", "-c", str(cfg), "--port", "0", log=log)
    url = await _url_in(log, web)
    nats_url = running_embedded(tmp_path / "data")
    assert nats_url, "tapeline web runs the demo's embedded server"
    nc = await connect(NatsSettings(url=nats_url, name="test-web"))
    browser = Browser(tmp_path / "profile")
    shots = Path(os.environ.get("TAPELINE_SCREENSHOTS", tmp_path))
    try:
        await browser.start(url)
        # The page is live (SSE open) and shows the demo's latest verdicts and NVDA's bars.
        await browser.wait_for("document.body?.dataset.live === '1' && !!document.querySelector('#latest .sym')")
        tickers = await browser.evaluate("[...document.querySelectorAll('#latest .sym')].map(e => e.dataset.ticker)")
        assert {"NVDA", "ORCL", "AAPL"} <= set(tickers)
        await browser.wait_for("state.lastCandle > 0 && document.querySelectorAll('#live li').length > 0")
        await browser.screenshot(shots / "web-demo.png")

        env = _decision("NVDA", "BUY", "browser test: published while the page is open")
        pub = await Publisher(nc, "tape", role="test").start()
        sent_ms = time.time() * 1000
        await pub.publish([env])
        await pub.close()
        seen_ms = await browser.wait_for(f"window.tapelineSeen[{env.event_id!r}]")
        assert seen_ms - sent_ms < 1000, f"shown {seen_ms - sent_ms:.0f} ms after publishing"
        item = await browser.evaluate(f"document.querySelector('#live li[data-id=\"{env.event_id}\"]').innerText")
        assert "NVDA" in item and "BUY" in item and "published while the page is open" in item
        card = await browser.evaluate("document.querySelector('#latest .sym[data-ticker=\"NVDA\"]').dataset.verdict")
        assert card == "BUY"
        # A bar of the charted symbol moves the chart.
        symbol, interval, last = await browser.evaluate("[state.symbol, state.interval, state.lastCandle]")
        start = (last + 60) * 10**9
        bar = Bar(
            event_id=new_event_id(time.time_ns()),
            ts_event=start + 60 * 10**9,
            ts_init=time.time_ns(),
            source="test",
            symbol=symbol,
            interval=interval,
            start_ns=start,
            open=50.0,
            high=51.0,
            low=49.0,
            close=50.5,
        )
        pub = await Publisher(nc, "tape", role="test").start()
        await pub.publish([bar])
        await pub.close()
        await browser.wait_for(f"state.lastCandle === {last + 60}")
        print(f"decision shown {seen_ms - sent_ms:.0f} ms after publishing")  # the figure the README quotes (-s)
        # The chat answers offline from the demo's projection and records the exchange.
        await browser.evaluate(
            "document.querySelector('#chat-input').value = 'why did we sell ORCL';"
            "document.querySelector('#chat-form').requestSubmit()"
        )
        answer = await browser.wait_for("document.querySelector('#chat-log .a')?.innerText")
        assert answer.startswith("ORCL SELL") or answer.startswith("no SELL decision for ORCL"), answer
        await browser.screenshot(shots / "web-live-decision.png")
        assert browser.errors == []  # no uncaught exception or console error on the page
        assert (shots / "web-live-decision.png").stat().st_size > 10_000
    finally:
        await browser.close()
        await nc.drain()
        web.terminate()
        await asyncio.to_thread(web.wait, 30)


@pytest.fixture
async def web(nc: Client, provisioned: str, tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    """A server on the test's prefix with operator token "s3cret"; (base URL, prefix)."""
    ProjectionDb(tmp_path / "p.duckdb").close()
    reader = Reader(nc, provisioned, tmp_path / "p.duckdb")
    server = WebServer(nc, provisioned, reader)
    Controls(nc, provisioned, reader, None, "s3cret").mount(server)
    port = await server.start("127.0.0.1", 0)
    yield f"http://127.0.0.1:{port}", provisioned
    await server.stop()


async def test_control_needs_the_token_and_a_confirmation_and_records_the_operator(
    nc: Client, web: tuple[str, str]
) -> None:
    base, prefix = web
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        wrong = await http.post("/api/control", json={"action": "halt", "operator": "ann", "token": "nope"})
        assert wrong.status_code == 403 and "token" in wrong.json()["error"]
        ann = {"action": "halt", "operator": "ann", "token": "s3cret"}
        step1 = await http.post("/api/control", json=ann)
        assert step1.status_code == 200 and step1.json()["confirm"] and "Halt" in step1.json()["summary"]
        assert await stored(nc, RISK.stream(prefix)) == []  # nothing happens before the confirmation
        other = await http.post(
            "/api/control",
            json={"action": "halt", "operator": "bob", "token": "s3cret", "confirm": step1.json()["confirm"]},
        )
        assert other.status_code == 400  # the code is for ann's halt only
        step1 = await http.post("/api/control", json=ann)
        done = await http.post(
            "/api/control",
            json={**ann, "note": "incident", "confirm": step1.json()["confirm"]},
        )
        assert done.status_code == 200, done.text
    (trip,) = await stored(nc, RISK.stream(prefix))
    assert isinstance(trip, CircuitBreakerTripped) and trip.breaker == "halt" and "ann" in trip.reason
    (action,) = [e for e in await stored(nc, OPS.stream(prefix)) if isinstance(e, OperatorAction)]
    assert (action.action, action.operator, action.note, action.origin) == ("halt", "ann", "incident", "web")
    assert action.event_id == done.json()["event_id"]


async def test_a_rebalance_from_the_page_is_recorded_with_what_it_did(nc: Client, web: tuple[str, str]) -> None:
    base, prefix = web
    ask = {"action": "rebalance", "operator": "cy", "token": "s3cret"}
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        code = (await http.post("/api/control", json=ask)).json()["confirm"]
        done = await http.post("/api/control", json={**ask, "confirm": code})
        assert done.status_code == 200, done.text
        again = await http.post("/api/control", json={**ask, "confirm": code})
        assert again.status_code == 400  # a code works once
    assert "no symbol has enough bars yet" in done.json()["detail"]  # an empty projection: nothing to trade
    (action,) = [e for e in await stored(nc, OPS.stream(prefix)) if isinstance(e, OperatorAction)]
    assert (action.action, action.operator, action.detail) == ("rebalance", "cy", done.json()["detail"])


async def test_without_a_token_the_page_is_view_only(nc: Client, provisioned: str, tmp_path: Path) -> None:
    reader = Reader(nc, provisioned, tmp_path / "none.duckdb")
    server = WebServer(nc, provisioned, reader)
    Controls(nc, provisioned, reader, None, "").mount(server)
    port = await server.start("127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            info = (await http.get("/api/control/info")).json()
            assert info["enabled"] is False and "TAPELINE_OPERATOR_TOKEN" in info["why"]
            refused = await http.post("/api/control", json={"action": "halt", "operator": "ann", "token": ""})
            assert refused.status_code == 403 and "view-only" in refused.json()["error"]
            page = await http.get("/")
            assert page.status_code == 200 and "lightweight-charts" in page.text
            js = await http.get("/static/lightweight-charts.standalone.production.js")
            assert js.status_code == 200 and "javascript" in js.headers["content-type"] and len(js.content) > 100_000
            assert (await http.get("/static/../server.py")).status_code == 404
    finally:
        await server.stop()
    assert await stored(nc, RISK.stream(provisioned)) == []


async def test_panels_say_what_is_missing_then_light_up_when_their_events_appear(tmp_path: Path) -> None:
    path = tmp_path / "p.duckdb"
    db = ProjectionDb(path)
    db.close()
    reader = Reader(None, "tape", path)
    (before,) = await data.performance(reader, 1000.0)
    assert before.empty.startswith("no equity curve yet") and not before.curve
    assert (await data.panel(reader, "fills")).empty == "no fills yet"
    # A fill on day 1 and a daily bar close on each of four days: equity 1000, 1100, 900, 1050.
    day = 86_400 * 10**9
    t0 = 1_767_225_600 * 10**9  # 2026-01-01
    fill = OrderFilled(event_id="F" * 26, ts_event=t0 + day // 3, ts_init=t0, source="test", account="paper",
                       symbol="X", client_order_id="c1", broker="paper", fill_id="f1", side="BUY", quantity=10,
                       price=100.0)  # fmt: skip
    bars = [
        Bar(
            event_id=f"B{i:025d}",
            ts_event=t0 + i * day + day // 2,
            symbol="X",
            interval="1d",
            start_ns=t0 + i * day,
            open=c,
            high=c,
            low=c,
            close=c,
            ts_init=t0,
            source="test",
        )
        for i, c in enumerate((100.0, 110.0, 90.0, 105.0))
    ]
    db = ProjectionDb(path)
    db.commit("TAPE_ORDER", {"fills": list(FILLS.rows(fill, 1))}, 1, {})
    db.commit("TAPE_MD", {"bars": [r for i, b in enumerate(bars, 1) for r in BARS.rows(b, i)]}, 4, {})
    db.close()
    (after,) = await data.performance(reader, 1000.0)
    assert after.account == "paper" and [round(c["equity"]) for c in after.curve] == [1000, 1100, 900, 1050]
    assert [round(c["pnl"]) for c in after.curve] == [0, 100, -200, 150]
    assert [round(c["drawdown"], 4) for c in after.curve] == [0, 0, round(-200 / 1100, 4), round(-50 / 1100, 4)]
    f = after.figures
    assert f["pnl"] == pytest.approx(50.0) and f["return"] == pytest.approx(0.05)
    assert f["max_drawdown"] == pytest.approx(200 / 1100)  # from the 1,100 peak to 900
    rets = [0.0, 0.1, 900 / 1100 - 1, 1050 / 900 - 1]  # daily, the first against the initial cash
    mean = sum(rets) / 4
    sd = (sum((r - mean) ** 2 for r in rets) / 3) ** 0.5
    assert f["sharpe"] == pytest.approx(mean / sd * 252**0.5)
    assert f["sortino"] > f["sharpe"] > 0 and f["calmar"] > 0
    (positions,) = (await data.panel(reader, "positions")).rows
    assert positions[:3] == ["paper", "X", 10.0]


async def test_a_busy_port_is_one_line_and_exit_2(provisioned: str, nats_url: str, tmp_path: Path) -> None:
    cfg = str(write_config(tmp_path, provisioned, nats_url))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        got = await asyncio.to_thread(
            subprocess.run,
            [*TAPELINE, "web", "-c", cfg, "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert got.returncode == 2 and "Traceback" not in got.stderr, got.stderr
    assert f"127.0.0.1:{port}" in got.stderr and "--port" in got.stderr
