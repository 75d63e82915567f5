"""Type stubs of p2pnode's native module (import p2pnode, not this)."""

from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from . import UNL

HIGH_WATER_BYTES: int

_Callback = Optional[Callable[[Any], Any]]

class Net:
    """A node. ``Net(...)`` creates it (resolving its servers); ``start()`` opens it."""

    def __init__(
        self,
        *,
        passive_bind: Optional[str] = None,
        passive_port: int = 0,
        node_type: Optional[str] = None,
        max_outbound: Optional[int] = None,
        max_inbound: Optional[int] = None,
        debug: Optional[int] = None,
        rendezvous: Union[str, Sequence[str], None] = None,
        dht_msg: Optional[str] = None,
        ntp: Optional[str] = None,
        forwarding_check: Optional[str] = None,
        wan_ip: Optional[str] = None,
        upnp: Optional[bool] = None,
        natpmp: Optional[bool] = None,
        listen: Optional[bool] = None,
        seed: Optional[int] = None,
        net_type: Optional[str] = None,
        interface: Optional[str] = None,
        dht_node: Any = None,
        send_timeout: Optional[float] = None,
        config: Optional[Mapping[str, Any]] = None,
    ) -> None: ...
    def start(self) -> None:
        """Opens the node (listener, reachability probe, punch registration, mailbox)."""
    def bootstrap(self) -> Optional[Dict[str, Any]]:
        """Asks the rendezvous for nodes and connects to them: {"server", "offered", "dialing"}."""
    def advertise(self) -> Optional[int]:
        """Registers with the rendezvous; returns the port it saw."""
    def stop(self) -> None:
        """Removes the registration, closes every connection, ends the node's thread."""
    def __enter__(self) -> "Net": ...
    def __exit__(self, *exc: object) -> bool: ...
    def broadcast(self, line: str) -> None:
        """Floods ``line`` to the whole overlay (each node gets it once)."""
    def __iter__(self) -> Iterator["Connection"]:
        """Runs finished connects' callbacks, then yields every connection (never blocks)."""
    @property
    def connection_count(self) -> int: ...
    def connect(
        self,
        unl: str,
        timeout: Optional[float] = None,
        events: Optional[Mapping[str, _Callback]] = None,
    ) -> Optional["Connection"]:
        """Connects to the node ``unl`` names; raises ConnectError with every method's reason."""
    @property
    def unl(self) -> UNL:
        """This node's UNL, v3 (a str with PyP2P's construct() and connect())."""
    @property
    def unl_v2(self) -> UNL:
        """This node's UNL in PyP2P's v2 format (plain-text connections)."""
    def events(self) -> List["Event"]:
        """Takes the node's events since the last call."""
    def wait(self, timeout: Optional[float] = None) -> bool:
        """Waits until lines arrive or a connection opens or closes (at most ``timeout`` s)."""
    @property
    def local_addr(self) -> Optional[Tuple[str, int]]: ...
    @property
    def passive_port(self) -> int: ...
    @property
    def is_running(self) -> bool: ...
    @property
    def net_type(self) -> str: ...

class Connection:
    """One connection: ``for reply in con`` yields the lines received since the last pass."""

    def __iter__(self) -> Iterator[str]: ...
    def send_line(self, line: str) -> None:
        """Queues ``line``; raises LineError (\\r or \\n) or ConnectionClosed."""
    def recv_line(self, timeout: Optional[float] = None) -> Optional[str]:
        """The oldest unread line, waiting up to ``timeout`` seconds; None if none came."""
    def close(self) -> None: ...
    @property
    def addr(self) -> Tuple[str, int]: ...
    @property
    def method(self) -> Optional[str]:
        """"lan", "direct", "ipv6", "reverse", "punch", "relay", "existing", or None."""
    @property
    def direction(self) -> str:
        """"inbound" or "outbound"."""
    @property
    def id(self) -> int: ...
    @property
    def is_open(self) -> bool: ...
    @property
    def close_reason(self) -> Optional[str]: ...
    def __eq__(self, other: object) -> bool: ...
    def __hash__(self) -> int: ...

class Event:
    """Something that happened in the node."""

    @property
    def kind(self) -> str: ...
    @property
    def conn_id(self) -> Optional[int]: ...
    @property
    def addr(self) -> Optional[Tuple[str, int]]: ...
    @property
    def reason(self) -> Optional[str]: ...
    @property
    def text(self) -> str: ...

class P2PError(Exception): ...
class ConfigError(P2PError, ValueError): ...
class UnlError(P2PError, ValueError): ...
class LineError(P2PError, ValueError): ...

class ResolveError(P2PError, OSError):
    name: str

class BindError(P2PError, OSError):
    addr: str

class RendezvousError(P2PError, ConnectionError):
    job: str
    errors: List[Tuple[str, str]]

class ConnectError(P2PError, ConnectionError):
    unl: str
    reasons: Dict[str, str]
    tries: List[Dict[str, Any]]

class ConnectionClosed(P2PError, ConnectionError):
    reason: str

class P2PTimeout(P2PError, TimeoutError):
    what: str

class NodeStopped(P2PError):
    reason: str
