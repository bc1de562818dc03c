"""JSON Schema per event, so consumers in other languages can validate what they read."""

from __future__ import annotations

from pathlib import Path

import msgspec

from tapeline.schemas.events import EVENT_TYPES


def export_json_schemas(directory: Path) -> list[Path]:
    """Write ``<tag>.schema.json`` for every event type; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for cls in EVENT_TYPES:
        tag = cls.__struct_config__.tag
        schema = msgspec.json.schema(cls)
        schema["$id"] = f"https://tapeline.dev/schemas/{tag}.schema.json"
        schema["title"] = cls.__name__
        path = directory / f"{tag}.schema.json"
        path.write_bytes(msgspec.json.format(msgspec.json.encode(schema), indent=2) + b"\n")
        written.append(path)
    return written
