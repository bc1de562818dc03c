"""JSON Schemas for consumers in other languages (docs/wire.md is the prose beside them).

Written: one ``<tag>.schema.json`` per event type, and one ``stream.<family>.schema.json`` per stream,
which validates any message body on that stream: one event of the stream's types, or a batch (a JSON
array of them; the message then carries a ``Tapeline-Count`` header). Event objects are *open*
(``additionalProperties: true``): a newer producer may add fields (with defaults), and older consumers
must ignore them. Closed schemas (``additionalProperties: false``) are only for contracts that never
grow silently, such as the LLM's strict reply format.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import msgspec

from tapeline.schemas.events import EVENT_TYPES
from tapeline.schemas.subjects import FAMILIES

DIALECT = "https://json-schema.org/draft/2020-12/schema"
BASE = "https://tapeline.dev/schemas"


def _open_objects(schema: dict[str, Any]) -> dict[str, Any]:
    for d in schema.get("$defs", {}).values():
        if d.get("type") == "object":
            d["additionalProperties"] = True
    return schema


def _write(path: Path, schema: dict[str, Any]) -> Path:
    path.write_bytes(msgspec.json.format(msgspec.json.encode(schema), indent=2) + b"\n")
    return path


def export_json_schemas(directory: Path) -> list[Path]:
    """Write the event and stream schemas; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for cls in EVENT_TYPES:
        tag = cls.__struct_config__.tag
        schema = _open_objects(msgspec.json.schema(cls))
        schema = {"$schema": DIALECT, "$id": f"{BASE}/{tag}.schema.json", "title": cls.__name__, **schema}
        written.append(_write(directory / f"{tag}.schema.json", schema))
    for fam in FAMILIES:
        types = tuple(c for c in EVENT_TYPES if c.family == fam.key)
        if not types:
            continue
        one = Union[types] if len(types) > 1 else types[0]  # noqa: UP007 - a runtime union of classes
        body = _open_objects(msgspec.json.schema(one | list[one]))  # type: ignore[operator,valid-type]
        schema = {
            "$schema": DIALECT,
            "$id": f"{BASE}/stream.{fam.key}.schema.json",
            "title": f"A message on the {fam.key} stream ({', '.join(c.__name__ for c in types)}), one or a batch",
            **body,
        }
        written.append(_write(directory / f"stream.{fam.key}.schema.json", schema))
    return written
