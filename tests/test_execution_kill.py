"""SIGKILL `tapeline up --only execution` between reservation/submit and the broker's answer, twenty times:
exactly one order per client id at the broker (the MT5 and TWS stand-ins, served from this test process)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from nats.aio.client import Client

from tapeline.bus.publisher import Publisher
from tapeline.schemas.events import AnyEvent, OrderApproved, OrderFilled
from tapeline.schemas.ids import new_event_id
from tapeline.schemas.subjects import ORDER
from tests.helpers import start_tapeline, wait_stored, wait_until, write_config
from tests.standins import mt5_ipc
from tests.standins.metatrader5 import TradingTerminal
from tests.standins.tws import TwsStandIn

KILLS = 20
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(900)  # twenty process starts: minutes on a machine with every core busy
async def test_twenty_kills_between_submit_and_answer_one_order_each(
    tmp_path: Path, nc: Client, publisher: Publisher, provisioned: str, nats_url: str
) -> None:
    terminal = TradingTerminal({"EURUSD": (1.0840, 1.0842)})
    env = {
        mt5_ipc.ENV: mt5_ipc.serve(terminal),
        "PYTHONPATH": os.pathsep.join([str(mt5_ipc.MODULE_DIR), str(ROOT)]),
    }
    cfg = write_config(tmp_path, provisioned, nats_url)
    cfg.write_text(
        cfg.read_text() + '\n[execution]\nbroker = "mt5"\naccount = "ACC1"\n[execution.mt5]\npoll_s = 0.05\n'
    )
    cids = [f"dec-{i}:0" for i in range(KILLS)]
    now = time.time_ns()
    await publisher.publish(
        [
            OrderApproved(
                event_id=new_event_id(),
                ts_event=now + i,
                ts_init=now,
                source="risk",
                account="ACC1",
                symbol="EURUSD",
                client_order_id=c,
                side="BUY",
                quantity=1.0,
            )
            for i, c in enumerate(cids)
        ]
    )
    log = tmp_path / "execution.log"
    for k in range(KILLS):
        terminal.hold = "before" if k % 2 else "after"  # killed before the order exists, or before its answer
        seen = len(terminal.sent())
        proc = start_tapeline("up", "--only", "execution", "-c", str(cfg), log=log, env=env)

        def sent_new(seen: int = seen, proc: subprocess.Popen[bytes] = proc, k: int = k) -> bool:
            assert proc.poll() is None, f"execution exited {proc.returncode}: {log.read_text()[-2000:]}"
            return len(terminal.sent()) > seen and len(terminal.held) > k

        await wait_until(sent_new, timeout=120)
        proc.kill()
        proc.wait()
    terminal.hold = ""
    terminal.release()  # held calls return to nobody; a call held "before" never reaches the book
    proc = start_tapeline("up", "--only", "execution", "-c", str(cfg), log=log, env=env)

    def all_filled(evs: list[AnyEvent]) -> bool:
        return {e.client_order_id for e in evs if isinstance(e, OrderFilled)} >= set(cids)

    evs = await wait_stored(nc, ORDER.stream(provisioned), "", all_filled, within=180)
    proc.terminate()
    proc.wait()
    assert len(terminal.held) == KILLS
    assert {c: terminal.orders_with(c) for c in cids} == dict.fromkeys(cids, 1)
    fills = [e for e in evs if e.tag == "order_filled"]
    print(f"{KILLS} kills: {len(terminal.orders)} broker orders, {len(terminal.sent())} order_send calls, "
          f"{len(fills)} fill events")  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(900)  # twenty process starts: minutes on a machine with every core busy
async def test_ibkr_kills_between_submit_and_answer_one_order_each(
    tmp_path: Path, nc: Client, publisher: Publisher, provisioned: str, nats_url: str
) -> None:
    """The same against the TWS stand-in (a socket server in this process: the book outlives each kill)."""
    tws = TwsStandIn({"NVDA": (100.0, 100.1)})
    cfg = write_config(tmp_path, provisioned, nats_url)
    cfg.write_text(
        cfg.read_text() + '\n[execution]\nbroker = "ibkr"\naccount = "ACC1"\n'
        f"[execution.ibkr]\nport = {tws.port}\ntimeout_s = 5.0\nreconnect_initial_s = 0.1\nreconnect_max_s = 1.0\n"
    )
    cids = [f"dec-{i}:0" for i in range(KILLS)]
    now = time.time_ns()
    await publisher.publish(
        [
            OrderApproved(event_id=new_event_id(), ts_event=now + i, ts_init=now, source="risk", account="ACC1",
                          symbol="NVDA", client_order_id=c, side="BUY", quantity=100.0)
            for i, c in enumerate(cids)
        ]
    )  # fmt: skip
    log = tmp_path / "execution.log"
    t0 = time.perf_counter()
    for k in range(KILLS):
        tws.hold = "before" if k % 2 else "after"  # killed before TWS has the order, or before its answer
        seen = len(tws.places)
        proc = start_tapeline("up", "--only", "execution", "-c", str(cfg), log=log)

        def placed_new(seen: int = seen, proc: subprocess.Popen[bytes] = proc, k: int = k) -> bool:
            assert proc.poll() is None, f"execution exited {proc.returncode}: {log.read_text()[-2000:]}"
            return len(tws.places) > seen and len(tws.held) > k

        await wait_until(placed_new, timeout=120)
        proc.kill()
        proc.wait()
    assert len(tws.held) == KILLS  # each kill held a different order
    tws.hold = ""
    tws.release()  # held answers go to nobody; a place held "before" never reaches the book
    proc = start_tapeline("up", "--only", "execution", "-c", str(cfg), log=log)

    def all_filled(evs: list[AnyEvent]) -> bool:
        return {e.client_order_id for e in evs if isinstance(e, OrderFilled)} >= set(cids)

    evs = await wait_stored(nc, ORDER.stream(provisioned), "", all_filled, within=180)
    proc.terminate()
    proc.wait()
    tws.close()
    assert {c: tws.orders_with(c) for c in cids} == dict.fromkeys(cids, 1)
    fills = [e for e in evs if isinstance(e, OrderFilled)]
    assert sorted(f.fill_id for f in fills) == sorted(x.exec_id for x in tws.executions)  # each fill once
    print(f"ibkr, {KILLS} kills in {time.perf_counter() - t0:.0f} s: {len(tws.orders)} broker orders, "
          f"{len(tws.places)} PLACE_ORDER messages, {len(fills)} fill events")  # fmt: skip
