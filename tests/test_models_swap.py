"""Model swaps on a real nats-server with the model handler running, never restarted: deploy, a refused
deployment, a second deploy and a rollback, through the ``tapeline models`` commands; every enrichment
scored once, by the version live when it was stored."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client
from typer.testing import CliRunner

from tapeline.adapters.files import read_bars
from tapeline.bus.components import ComponentRunner
from tapeline.bus.publisher import Publisher
from tapeline.handlers.enrichment import MarketFeatures
from tapeline.handlers.model_agent import ModelAgent, ModelAgentConfig
from tapeline.models.price import default_classifier, export_onnx, file_sha256, make_dataset, version_of
from tapeline.models_cli import ARTEFACTS, models_app, series_of
from tapeline.schemas.events import Alert, Bar, Enrichment, Event, ModelDeployed, Signal
from tapeline.schemas.ids import derive_event_id
from tests.helpers import stored, wait_until, write_config


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(models_app, list(args))
    return result.exit_code, result.output


async def test_swaps_without_restart_score_each_enrichment_once_with_the_live_version(
    nc: Client, provisioned: str, publisher: Publisher, nats_url: str, tmp_path: Path, shared_data: Path
) -> None:
    config = write_config(tmp_path, provisioned, nats_url)
    common = ["--config", str(config), "--nats", nats_url]
    (default,) = ARTEFACTS.glob("price-*.onnx")
    bars = [
        b for b in read_bars(shared_data / "bars" / "orcl-daily-1995-2014.csv", "ORCL").events if isinstance(b, Bar)
    ]
    series = series_of(bars[:400])
    ds = make_dataset([series], 5)
    other = tmp_path / "other.onnx"
    other.write_bytes(export_onnx(default_classifier().fit(ds.X, ds.y), ds))
    handler = MarketFeatures()
    enr: list[Event] = []
    for b in bars[:140]:
        (e,) = handler.handle(b)
        assert isinstance(e, Enrichment)
        enr.append(msgspec.structs.replace(e, event_id=derive_event_id(b.ts_event, "enr", b.event_id), ts_init=1))

    agent = ModelAgent(ModelAgentConfig(store=str(tmp_path / "data" / "models")))
    runner = ComponentRunner(nc, publisher, agent, provisioned)
    assert [s.stream for s in runner.specs] == [f"{provisioned.upper()}_INTEL"]  # one ordered consumer
    task = asyncio.create_task(runner.run())
    intel = f"{provisioned.upper()}_INTEL"

    async def signals(n: int) -> bool:
        got = [e for e in await stored(nc, intel, f"{provisioned}.intel.signal.>") if isinstance(e, Signal)]
        return len(got) >= n

    async def step(events: list[Event], *, signals_after: int) -> None:
        await publisher.publish(events)
        await wait_until(lambda: signals(signals_after), timeout=90)

    await publisher.publish(enr[:70])
    await wait_until(lambda: agent.counters.get("no_model") == 10, timeout=90)  # 60 warm-up rows, 10 unscored

    code, out = await asyncio.to_thread(_cli, "deploy", str(default), *common)
    assert code == 0 and "deployed price" in out, out
    await step(enr[70:90], signals_after=20)

    # A deployment the handler must refuse: its model is not in the store. The previous one keeps serving.
    bogus = ModelDeployed(
        event_id="BOGUS0000000000000000000001", ts_event=time.time_ns(), ts_init=time.time_ns(), source="test",
        model="price", model_version="cdcdcdcdcdcd", sha256="cd" * 32,
    )  # fmt: skip
    await publisher.publish([bogus])
    await step(enr[90:110], signals_after=40)

    code, out = await asyncio.to_thread(_cli, "deploy", str(other), *common)
    assert code == 0, out
    await step(enr[110:125], signals_after=55)

    v_default = default.stem.removeprefix("price-")
    v_other = version_of(file_sha256(other.read_bytes()))
    code, out = await asyncio.to_thread(_cli, "rollback", *common)
    assert code == 0 and f"rolled back price to {v_default} (was {v_other})" in out, out  # the refused one skipped
    await step(enr[125:140], signals_after=70)

    code, listing = await asyncio.to_thread(_cli, "list", *common)
    runner.stop()
    await task

    stream = await stored(nc, intel, f"{provisioned}.intel.>")
    sigs = [e for e in stream if isinstance(e, Signal)]
    assert len(sigs) == len({s.causation_id for s in sigs}) == 70  # none lost, none scored twice
    by_cause = {s.causation_id: f"{int(s.metrics['model_version']):012x}" for s in sigs}
    want = {**dict.fromkeys(range(70, 110), v_default), **dict.fromkeys(range(110, 125), v_other)}
    want |= dict.fromkeys(range(125, 140), v_default)  # rolled back past the refused one: the default again
    assert {i: by_cause[enr[i].event_id] for i in range(70, 140)} == want
    assert all(enr[i].event_id not in by_cause for i in range(70))
    deployed = [e for e in stream if isinstance(e, ModelDeployed)]
    assert [(d.model_version, d.rollback) for d in deployed] == [
        (v_default, False),
        ("cdcdcdcdcdcd", False),
        (v_other, False),
        (v_default, True),
    ]
    alerts = [
        e for e in await stored(nc, f"{provisioned.upper()}_OPS", f"{provisioned}.ops.alert.>") if isinstance(e, Alert)
    ]
    assert [(a.severity, a.resolved) for a in alerts] == [("critical", False), ("info", True)]
    assert "cdcdcdcdcdcd refused" in alerts[0].message and f"{v_default} keeps serving" in alerts[0].message
    live_rows = [line for line in listing.splitlines() if "●" in line]
    assert len(live_rows) == 1 and v_default in live_rows[0], listing


def test_deploying_a_bad_file_or_rolling_back_with_no_history_is_one_line(
    tmp_path: Path, nats_url: str, prefix: str
) -> None:
    config = write_config(tmp_path, prefix, nats_url)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"nope")
    code, out = _cli("deploy", str(bad), "--config", str(config), "--nats", nats_url)
    assert code == 2 and out.strip().count("\n") == 0 and "refused: not an ONNX model" in out
    code, out = _cli("deploy", "abc123", "--config", str(config), "--nats", nats_url)
    assert code == 2 and "no model" in out and "version 'abc123'" in out
    code, out = _cli("rollback", "--config", str(config), "--nats", nats_url)
    assert code == 2 and "no earlier deployment" in out


@pytest.mark.parametrize("missing", ["data"])
def test_training_without_the_data_is_one_line(tmp_path: Path, missing: str) -> None:
    code, out = _cli("train", "--data", str(tmp_path / missing))
    assert code == 2 and "models train: no 1d bar files" in out and "missing" in out
