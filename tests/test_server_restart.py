"""nats-server restarts under a running pipeline: `tapeline up` and `tapeline feed sim` as real processes.

The server is killed (or stopped) and started again on the same store and port, each time once the
stream has visibly grown since the last restart; the pipeline must resume by itself, store every
tick exactly once, pass `replay --verify`, and stop on SIGTERM within its drain timeout.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import duckdb

from tapeline.bus.connection import NatsSettings, TapelineClient, close_connection, connect
from tapeline.bus.jetstream import JetStreamApi, JetStreamError
from tapeline.bus.server import EmbeddedNats
from tapeline.schemas.subjects import FAMILIES
from tests.helpers import TAPELINE, start_tapeline, wait_until, write_config

DRAIN_S = 10.0  # `up --drain-timeout`, default
TICKS = 60_000
STEP = 10_000  # the stream grows by this much between restarts


class Pipeline:
    """What the test watches, over its own connection (which rides out the restarts like the rest)."""

    def __init__(self, nc: TapelineClient, prefix: str) -> None:
        self.api = JetStreamApi(nc, timeout=1.0)
        self.prefix = prefix
        self.md = f"{prefix.upper()}_MD"

    async def _ask(self, call: Any) -> Any:
        try:
            return await call
        except JetStreamError:  # the server is down or just back
            return None

    async def md_last_seq(self) -> int:
        info = await self._ask(self.api.stream_info(self.md))
        return int(info["state"]["last_seq"]) if info else -1

    async def projected(self) -> int:
        """The projector's ack floor on market data; -1 while unknown. Its consumer has ack policy none, so
        the floor follows deliveries: it moves again once the projector has re-created its durable after a
        restart. What it committed is checked in the file at the end."""
        info = await self._ask(self.api.consumer_info(self.md, "projector_md"))
        return int(info["ack_floor"]["stream_seq"]) if info else -1

    async def running(self) -> bool:
        """The projector's consumer exists: `up` has started."""
        return await self.projected() >= 0

    async def caught_up(self) -> bool:
        """Every consumer of every stream has nothing pending, and the projector has all market data."""
        for fam in FAMILIES:
            stream = fam.stream(self.prefix)
            names = await self._ask(self.api.consumer_names(stream))
            for name in names or []:
                info = await self._ask(self.api.consumer_info(stream, name))
                if info is None or info["num_pending"] or info["num_ack_pending"]:
                    return False
        last = await self.md_last_seq()
        return last > 0 and await self.projected() == last


def _exit_within(proc: subprocess.Popen[bytes], seconds: float) -> tuple[int | None, float]:
    started = time.monotonic()
    try:
        rc = proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        rc = None
    return rc, time.monotonic() - started


async def _run(tmp_path: Path, *, restarts: int, graceful: bool, stop_up_while_down: bool = False) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    url = server.start()
    prefix = "rs"
    cfg = write_config(tmp_path, prefix, url, batch_ticks="false")  # one tick per message: the test counts them
    cfg.write_text(cfg.read_text() + f'[sim]\nsymbols = ["NVDA", "ORCL", "BRK.B"]\nticks = {TICKS}\nseed = 3\n')
    db = tmp_path / "data" / "projections" / "tapeline.duckdb"
    up_log, feed_log = tmp_path / "up.log", tmp_path / "feed.log"
    nc = await connect(NatsSettings(url=url, name="restart-test"))
    watch = Pipeline(nc, prefix)
    try:
        up = start_tapeline(
            "up", "-c", str(cfg), "--only", "handlers", "--only", "projector", log=up_log,
        )  # fmt: skip
        await wait_until(watch.running, timeout=60)
        feed = start_tapeline("feed", "sim", "--nats", url, "--config", str(cfg), log=feed_log)
        resumed: list[float] = []
        grown_from = 0
        for _ in range(restarts):

            async def grown(base: int = grown_from) -> bool:
                if await watch.md_last_seq() >= base + STEP:
                    return True
                assert feed.poll() is None, (
                    f"the feed ended before the restart: raise TICKS\n{feed_log.read_text()[-3000:]}"
                )
                return False

            try:
                await wait_until(grown, timeout=60)
            except AssertionError as exc:  # which side stalled: the feed, or the stream as the test sees it
                seen = await watch.md_last_seq()
                tail = feed_log.read_text()[-2000:]
                raise AssertionError(
                    f"{exc}: stream at {seen}, waiting for {grown_from + STEP}; feed log:\n{tail}"
                ) from None
            before = await watch.projected()
            server.stop() if graceful else server.kill()
            server.start()
            back = time.monotonic()

            async def moved(before: int = before) -> bool:
                return await watch.projected() > before

            await wait_until(moved, timeout=60)  # the projector commits again: the pipeline resumed
            resumed.append(time.monotonic() - back)
            grown_from = await watch.md_last_seq()

        rc, _ = await asyncio.to_thread(_exit_within, feed, 90)
        assert rc == 0, feed_log.read_text()[-3000:]
        await wait_until(watch.caught_up, timeout=90)
        if stop_up_while_down:
            server.stop()
        up.send_signal(signal.SIGTERM)
        rc, took = await asyncio.to_thread(_exit_within, up, DRAIN_S + 20)
        assert rc == 0, up_log.read_text()[-3000:]
        assert took < DRAIN_S, f"SIGTERM took {took:.1f}s, over the {DRAIN_S}s drain timeout"
        if stop_up_while_down:
            server.start()
        print(  # figures for the record (pytest -s)
            f"\nrestart figures ({'graceful' if graceful else 'kill -9'}): resumed after "
            f"{', '.join(f'{s:.2f}' for s in resumed)} s; SIGTERM to exit {took:.2f} s"
            f"{' with the server down' if stop_up_while_down else ''}"
        )
        last = await watch.md_last_seq()
        con = duckdb.connect(str(db), read_only=True)
        try:
            rows, distinct = con.execute("SELECT count(*), count(DISTINCT event_id) FROM ticks").fetchone() or ()
            (checkpoint,) = con.execute(
                "SELECT last_seq FROM _checkpoints WHERE stream = ?", [watch.md]
            ).fetchone() or (None,)
        finally:
            con.close()
        assert rows == distinct == TICKS, f"{rows} tick rows, {distinct} distinct, {TICKS} published"
        assert checkpoint == last
        verify = await asyncio.to_thread(
            subprocess.run,
            [*TAPELINE, "replay", "--verify", "-c", str(cfg)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert verify.returncode == 0, verify.stdout[-3000:] + verify.stderr[-3000:]
    finally:
        await close_connection(nc, 2.0)
        server.stop()


async def test_pipeline_resumes_after_the_server_is_killed_three_times(tmp_path: Path) -> None:
    await _run(tmp_path, restarts=3, graceful=False)


async def test_pipeline_resumes_after_graceful_restarts_and_stops_with_the_server_gone(tmp_path: Path) -> None:
    await _run(tmp_path, restarts=2, graceful=True, stop_up_while_down=True)


async def test_up_stops_within_its_drain_timeout_when_the_server_never_comes_back(tmp_path: Path) -> None:
    """Every role, the default drain timeout; SIGTERM once the server is gone for good."""
    server = EmbeddedNats(tmp_path / "nats")
    url = server.start()
    cfg = write_config(tmp_path, "gone", url)
    log = tmp_path / "up.log"
    nc = await connect(NatsSettings(url=url))
    api = JetStreamApi(nc, timeout=2.0)
    up = start_tapeline("up", "-c", str(cfg), log=log)

    async def steady() -> bool:
        """Every consumer the pipeline started with exists: past start-up, into its loops."""
        started = [json.loads(line) for line in log.read_text().splitlines() if '"pipeline started"' in line]
        if not started:
            return False
        names = {n for fam in FAMILIES for n in await api.consumer_names(fam.stream("gone"))}
        return set(started[0]["consumers"]) <= names

    try:
        await wait_until(steady, timeout=90)
    finally:
        await close_connection(nc, 2.0)
        server.kill()
    up.send_signal(signal.SIGTERM)
    rc, took = await asyncio.to_thread(_exit_within, up, 60)
    assert rc == 0, log.read_text()[-3000:]
    assert took < DRAIN_S, f"SIGTERM took {took:.1f}s, over the {DRAIN_S}s drain timeout\n" + log.read_text()[-3000:]
    print(f"\nSIGTERM to exit with the server gone, every role: {took:.2f} s")
