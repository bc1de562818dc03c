"""`tapeline backtest` as a real process: price files -> decisions -> risk -> paper fills -> performance vs
buy and hold, events published under an isolated namespace of a real nats-server."""

from __future__ import annotations

import asyncio
import math
import os
import random
import re
import subprocess
from datetime import date, timedelta
from pathlib import Path

import duckdb
from nats.aio.client import Client

from tapeline.schemas.events import OrderApproved, OrderFilled
from tapeline.schemas.subjects import MD, ORDER
from tests.helpers import TAPELINE, stored


def walk_csv(path: Path, seed: int, drift: float, n: int = 160) -> None:
    """Daily bars in the Yahoo CSV layout the file feed reads: a seeded trending random walk."""
    rng = random.Random(seed)
    px, day = 50.0, date(2012, 1, 2)
    lines = ["Date,Open,High,Low,Close,Adj Close,Volume"]
    for _ in range(n):
        while day.weekday() >= 5:
            day += timedelta(days=1)
        close = px * math.exp(drift + rng.gauss(0, 0.012))
        hi, lo = max(px, close) * 1.004, min(px, close) * 0.996
        lines.append(f"{day},{px:.4f},{hi:.4f},{lo:.4f},{close:.4f},{close:.4f},{rng.randint(400_000, 600_000)}")
        px, day = close, day + timedelta(days=1)
    path.write_text("\n".join(lines) + "\n")


async def test_backtest_trades_the_files_and_reports_against_buy_and_hold(
    tmp_path: Path, nats_url: str, nc: Client, prefix: str
) -> None:
    walk_csv(tmp_path / "up.csv", 1, 0.004)
    walk_csv(tmp_path / "down.csv", 2, -0.004)
    sources = "".join(
        f'[[feeds.files.sources]]\npath = "{tmp_path / f}.csv"\nsymbol = "{s}"\nkind = "bars"\ninterval = "1d"\n'
        for f, s in (("up", "UPP"), ("down", "DWN"))
    )
    config = tmp_path / "tapeline.toml"
    config.write_text(
        f'prefix = "{prefix}"\nnats_url = "{nats_url}"\ndata_dir = "{tmp_path / "data"}"\nmetrics_port = 0\n'
        "[momentum]\nwindow = 10\n[sizing]\nmax_loss_usd = 2000.0\nmax_es95_usd = 2000.0\nmin_confidence = 0.3\n"
        '[risk]\nes95_limit = 2000.0\nmax_correlation = 1.0\n[scanner]\nmin_grade = "C"\n' + sources
    )
    png = tmp_path / "bt.png"
    r = await asyncio.to_thread(
        subprocess.run,
        [*TAPELINE, "backtest", "--name", "t1", "--png", str(png), "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Backtest of paper vs buy and hold" in r.stdout and "all (buy & hold)" in r.stdout
    m = re.search(
        r"(\d[\d,]*) decisions -> (\d[\d,]*) intents -> (\d[\d,]*) approved, .* -> (\d[\d,]*) fills", r.stdout
    )
    assert m is not None, r.stdout
    decisions, intents, approved, fills = (int(g.replace(",", "")) for g in m.groups())
    assert decisions > 200 and intents > 0 and approved > 0 and 0 < fills <= approved
    assert png.read_bytes()[:4] == b"\x89PNG"

    db = duckdb.connect(str(tmp_path / "data" / "backtest" / "t1.duckdb"), read_only=True)
    try:
        (n_fills,) = db.execute("SELECT count(*) FROM fills").fetchone() or (0,)
        (days,) = db.execute("SELECT count(*) FROM equity_curve WHERE account = 'paper'").fetchone() or (0,)
    finally:
        db.close()
    assert n_fills == fills and days > 10

    target = f"{prefix}-backtest-t1"
    orders = await stored(nc, ORDER.stream(target))
    assert sum(isinstance(e, OrderFilled) for e in orders) == fills
    assert sum(isinstance(e, OrderApproved) for e in orders) == approved
    assert len(await stored(nc, MD.stream(target))) == 320  # the files' bars
    # every fill at the open of a bar that started after its approval (the paper broker's rule)
    approvals = {e.client_order_id: e for e in orders if isinstance(e, OrderApproved)}
    for f in (e for e in orders if isinstance(e, OrderFilled)):
        assert f.ts_event > approvals[f.client_order_id].ts_event
