"""A stand-in for ``ib_async.IB``: the same event objects (eventkit), method names and error codes.

It uses ib_async's own data classes (Contract, Ticker, TickData, BarData), so the feed sees the
same shapes as from TWS. Test controls: ``trade``/``quote`` push ticker updates, ``lose``/``restore``
fire error 1100 and 1101/1102, ``drop`` closes the socket, ``in_use`` makes client ids answer 326,
``refuse`` makes the next connects fail.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from eventkit import Event
from ib_async import BarData, Contract, Ticker
from ib_async.objects import TickData


class IBStandIn:
    def __init__(self, history: dict[str, list[BarData]] | None = None) -> None:
        self.connectedEvent = Event("connectedEvent")
        self.disconnectedEvent = Event("disconnectedEvent")
        self.errorEvent = Event("errorEvent")
        self.pendingTickersEvent = Event("pendingTickersEvent")
        self._connected = False
        self.client_id: int | None = None
        self.in_use: set[int] = set()
        self.refuse = 0
        self.connect_attempts: list[int] = []
        self.history = history or {}
        self.history_requests: list[tuple[str, str, str, str]] = []
        self.subscriptions: list[tuple[str, str]] = []  # (symbol, genericTickList) per reqMktData
        self.cancels = 0
        self.tickers: dict[str, Ticker] = {}
        self.live: set[str] = set()  # subscriptions that deliver (1101 kills them until re-requested)
        self.linked = True  # TWS <-> IB servers
        self.market_data_type = 1

    # --- ib_async API
    async def connectAsync(
        self,
        host: str = "127.0.0.1",
        port: int = 7497,
        clientId: int = 1,
        timeout: float | None = 4,  # noqa: ASYNC109 (ib_async's signature)
        readonly: bool = False,
        account: str = "",
    ) -> Any:
        self.connect_attempts.append(clientId)
        if self.refuse > 0:
            self.refuse -= 1
            raise ConnectionRefusedError(61, f"Connect call failed ('{host}', {port})")
        if clientId in self.in_use:
            self.errorEvent.emit(-1, 326, "Unable to connect as the client id is already in use. "
                                 "Retry with a unique client id.", None)  # fmt: skip
            raise ConnectionError("Socket disconnect")
        self._connected = True
        self.client_id = clientId
        self.connectedEvent.emit()
        return self

    def isConnected(self) -> bool:
        return self._connected

    def disconnect(self) -> None:
        was = self._connected
        self._connected = False
        self.live.clear()
        if was:
            self.disconnectedEvent.emit()

    async def qualifyContractsAsync(self, *contracts: Contract) -> list[Contract]:
        for i, c in enumerate(contracts):
            c.conId = 1000 + i
        return list(contracts)

    def reqMarketDataType(self, t: int) -> None:
        self.market_data_type = t

    def reqMktData(
        self,
        contract: Contract,
        genericTickList: str = "",
        snapshot: bool = False,
        regulatorySnapshot: bool = False,
        mktDataOptions: list[Any] | None = None,
    ) -> Ticker:
        assert self._connected, "reqMktData while disconnected"
        self.subscriptions.append((contract.symbol, genericTickList))
        t = self.tickers.get(contract.symbol) or Ticker(contract=contract)
        self.tickers[contract.symbol] = t
        self.live.add(contract.symbol)
        return t

    def cancelMktData(self, contract: Contract) -> None:
        self.cancels += 1
        self.live.discard(contract.symbol)

    async def reqHistoricalDataAsync(self, contract: Contract, endDateTime: Any, durationStr: str, barSizeSetting: str,
                                     whatToShow: str, useRTH: bool, formatDate: int = 1, keepUpToDate: bool = False,
                                     chartOptions: Any = (), timeout: float = 60) -> list[BarData]:  # fmt: skip  # noqa: ASYNC109
        self.history_requests.append((contract.symbol, durationStr, barSizeSetting, whatToShow))
        return list(self.history.get(contract.symbol, []))

    # --- test controls
    def _emit(self, symbol: str, ticks: list[TickData], when: datetime) -> bool:
        if not (self._connected and self.linked and symbol in self.live):
            return False
        t = self.tickers[symbol]
        t.ticks = ticks
        t.time = when
        self.pendingTickersEvent.emit({t})
        return True

    def trade(self, symbol: str, price: float, size: float, when: datetime) -> bool:
        """An RTVolume trade (tick type 48), plus the plain last/size ticks TWS also sends."""
        t = self.tickers[symbol]
        t.last, t.lastSize = price, size
        return self._emit(symbol, [TickData(when, 4, price, size), TickData(when, 48, price, size)], when)

    def quote(self, symbol: str, bid: float, ask: float, when: datetime) -> bool:
        t = self.tickers[symbol]
        t.bid, t.ask = bid, ask
        return self._emit(symbol, [TickData(when, 1, bid, 5), TickData(when, 2, ask, 7)], when)

    def lose(self) -> None:
        self.linked = False
        self.errorEvent.emit(-1, 1100, "Connectivity between IB and Trader Workstation has been lost.", None)

    def restore(self, data_lost: bool) -> None:
        self.linked = True
        if data_lost:
            self.live.clear()  # market data subscriptions are gone until requested again
            self.errorEvent.emit(-1, 1101, "Connectivity between IB and TWS has been restored- data lost.", None)
        else:
            self.errorEvent.emit(-1, 1102, "Connectivity between IB and TWS has been restored- data maintained.", None)

    def drop(self, refuse_next: int = 0) -> None:
        """TWS goes away (restart): the socket closes; the next ``refuse_next`` connects fail."""
        self.refuse = refuse_next
        self.disconnect()


def minute_bars(start: datetime, n: int, price: float = 100.0) -> list[BarData]:
    return [
        BarData(
            date=start + timedelta(minutes=i),
            open=price + i,
            high=price + i + 1,
            low=price + i - 1,
            close=price + i + 0.5,
            volume=10 + i,
            average=price + i,
            barCount=3,
        )
        for i in range(n)
    ]


T0 = datetime(2024, 1, 8, 14, 30, tzinfo=UTC)
