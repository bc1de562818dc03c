"""A small PNG chart of an equity curve over its drawdown, with no plotting dependency.

Two panels on a white background: equity (blue line, dashed grey baseline at the starting value,
an optional orange comparison line such as buy-and-hold) and, below it, the drawdown (red area
hanging from zero). Light grid lines at quarters; no text (the figures are printed beside it).
Written with ``zlib`` and the PNG chunk format (8-bit RGB, filter 0).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

RGB = tuple[int, int, int]
BLUE: RGB = (31, 119, 180)
ORANGE: RGB = (255, 127, 14)
RED: RGB = (214, 39, 40)
GRID: RGB = (225, 225, 225)
BASE: RGB = (150, 150, 150)


class Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.w, self.h = width, height
        self.px = bytearray(b"\xff" * (width * height * 3))

    def dot(self, x: int, y: int, c: RGB) -> None:
        if 0 <= x < self.w and 0 <= y < self.h:
            i = (y * self.w + x) * 3
            self.px[i : i + 3] = bytes(c)

    def line(self, x0: int, y0: int, x1: int, y1: int, c: RGB, *, dashed: bool = False) -> None:
        """Bresenham, one pixel wide."""
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err, n = dx + dy, 0
        while True:
            if not dashed or (n // 4) % 2 == 0:
                self.dot(x0, y0, c)
            n += 1
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def png(self) -> bytes:
        rows = b"".join(b"\x00" + bytes(self.px[y * self.w * 3 : (y + 1) * self.w * 3]) for y in range(self.h))

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        header = struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")
        )


def _polyline(cv: Canvas, ys: Sequence[int], x0: int, x1: int, c: RGB) -> None:
    n = len(ys)
    xs = [x0 + (x1 - x0) * i // max(1, n - 1) for i in range(n)]
    if n == 1:
        cv.dot(xs[0], ys[0], c)
    for i in range(1, n):
        cv.line(xs[i - 1], ys[i - 1], xs[i], ys[i], c)
        cv.line(xs[i - 1], ys[i - 1] + 1, xs[i], ys[i] + 1, c)  # two pixels thick


def equity_chart(
    path: Path,
    equity: Sequence[float],
    drawdown: Sequence[float],
    *,
    baseline: float,
    compare: Sequence[float] = (),
    width: int = 900,
    height: int = 500,
) -> None:
    """Write the two-panel chart of ``equity`` (and ``compare``) over ``drawdown`` (fractions >= 0)."""
    cv = Canvas(width, height)
    pad = 10
    top_h = int(height * 0.65)
    x0, x1 = pad, width - pad
    for panel_top, panel_bottom in ((pad, top_h - pad), (top_h + pad, height - pad)):
        for q in range(5):
            y = panel_top + (panel_bottom - panel_top) * q // 4
            cv.line(x0, y, x1, y, GRID)
    values = [*equity, *compare, baseline]
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0

    def y_of(v: float) -> int:
        return int(top_h - pad - (v - lo) / span * (top_h - 2 * pad))

    cv.line(x0, y_of(baseline), x1, y_of(baseline), BASE, dashed=True)
    if compare:
        _polyline(cv, [y_of(v) for v in compare], x0, x1, ORANGE)
    if equity:
        _polyline(cv, [y_of(v) for v in equity], x0, x1, BLUE)
    deepest = max(drawdown, default=0.0) or 1.0
    d_top, d_bottom = top_h + pad, height - pad
    n = len(drawdown)
    for i, d in enumerate(drawdown):
        x = x0 + (x1 - x0) * i // max(1, n - 1)
        x_next = x0 + (x1 - x0) * (i + 1) // max(1, n - 1) if i + 1 < n else x + 1
        y = d_top + int(d / deepest * (d_bottom - d_top))
        for xx in range(x, max(x + 1, x_next)):
            cv.line(xx, d_top, xx, y, RED)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cv.png())
