"""p2pnode: nodes behind NATs that find each other, with PyP2P's API and loop
(`for con in net: for reply in con: ...`; see examples/alice.py and bob.py).

The node runs on its own thread (keepalives, hole punches and the rendezvous session never
wait for this loop); blocking calls release the GIL and return on Ctrl-C.
"""

from typing import Any, Callable, Dict, Optional

from ._native import (
    HIGH_WATER_BYTES,
    BindError,
    ConfigError,
    ConnectError,
    Connection,
    ConnectionClosed,
    Event,
    LineError,
    Net,
    NodeStopped,
    P2PError,
    P2PTimeout,
    RendezvousError,
    ResolveError,
    UnlError,
)

__all__ = [
    "DHT",
    "HIGH_WATER_BYTES",
    "UNL",
    "BindError",
    "ConfigError",
    "ConnectError",
    "Connection",
    "ConnectionClosed",
    "Event",
    "LineError",
    "Net",
    "NodeStopped",
    "P2PError",
    "P2PTimeout",
    "RendezvousError",
    "ResolveError",
    "UnlError",
]


class UNL(str):
    """A node's UNL: its text (a ``str``), with PyP2P's ``construct()`` and ``connect()``.

    ``net.unl`` returns one; ``str(net.unl)`` or the value itself is what to hand to the
    peer that should connect.
    """

    _net: Optional[Net]

    def __new__(cls, text: str, net: Optional[Net] = None) -> "UNL":
        self = super().__new__(cls, text)
        self._net = net
        return self

    def construct(self) -> str:
        """The UNL text (PyP2P's name)."""
        return str(self)

    def connect(
        self,
        unl: str,
        events: Optional[Dict[str, Optional[Callable[[Any], Any]]]] = None,
        timeout: Optional[float] = None,
    ) -> Optional[Connection]:
        """Connects this UNL's node to ``unl`` (PyP2P's ``net.unl.connect(unl, events)``).

        With ``events={"success": f, "failure": g}`` it returns at once and calls ``f(con)``
        or ``g(error)`` from a later ``for con in net``; without, it waits like
        ``Net.connect``.
        """
        if self._net is None:
            raise NodeStopped("this UNL is not bound to a Net; use net.unl.connect()")
        return self._net.connect(str(unl), timeout=timeout, events=events)


class DHT:
    """PyP2P's ``dht_node=DHT()``: here, the dht-msg mailbox server the node uses for reverse
    connects and relays (``Net(dht_node=DHT("host:port"))`` is ``Net(dht_msg="host:port")``).
    """

    def __init__(self, server: str) -> None:
        self.server = server

    def __repr__(self) -> str:
        return f"DHT({self.server!r})"
