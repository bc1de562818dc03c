"""The MetaTrader5 stand-in served to other processes, as the real module talks to its terminal over IPC.

The test process owns the terminal (:class:`TradingTerminal`); a ``tapeline`` process started with
``tests/standins/mt5_module`` first on its PYTHONPATH imports a ``MetaTrader5`` module whose
functions call that terminal through a ``multiprocessing`` manager. Killing the ``tapeline``
process leaves the terminal, its orders and its deals where they are.
"""

from __future__ import annotations

import threading
from multiprocessing.managers import BaseManager
from pathlib import Path
from typing import Any

MODULE_DIR = Path(__file__).with_name("mt5_module")
ENV = "TAPELINE_TEST_MT5_TERMINAL"  # host:port:authkey of the terminal's manager
AUTHKEY = b"tapeline-test-terminal"


class TerminalManager(BaseManager):
    pass


def serve(terminal: Any) -> str:
    """Serve ``terminal`` on a local port (daemon threads); returns the value for :data:`ENV`."""
    TerminalManager.register("terminal", callable=lambda: terminal)
    server = TerminalManager(address=("127.0.0.1", 0), authkey=AUTHKEY).get_server()
    threading.Thread(target=server.serve_forever, daemon=True, name="mt5-terminal").start()
    host, port = server.address
    return f"{host}:{port}"


def connect(where: str) -> Any:
    """A proxy of the served terminal: every public method, called in the terminal's process."""
    host, port = where.rsplit(":", 1)
    TerminalManager.register("terminal")
    m = TerminalManager(address=(host, int(port)), authkey=AUTHKEY)
    m.connect()
    return m.terminal()  # type: ignore[attr-defined]
