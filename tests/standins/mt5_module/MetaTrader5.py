"""``import MetaTrader5`` in a process the tests start: module functions that call the test's terminal."""

from __future__ import annotations

import os
from typing import Any

from tests.standins import metatrader5 as _consts
from tests.standins.mt5_ipc import ENV, connect

_terminal = connect(os.environ[ENV])

for _name in dir(_consts):
    if _name.isupper():
        globals()[_name] = getattr(_consts, _name)


def __getattr__(name: str) -> Any:
    return getattr(_terminal, name)
