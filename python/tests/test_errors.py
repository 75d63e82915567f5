"""Errors raise the mapped exceptions, and their messages name what was wrong."""

import time

import pytest

import p2pnode
from conftest import Server, until


def test_rendezvous_down_names_the_address(make_net):
    server = Server("rendezvous")
    addr = server.addr
    server.stop()  # nothing listens there now: connections are refused
    net = make_net(rendezvous=[addr])
    net.start()
    with pytest.raises(p2pnode.RendezvousError) as info:
        net.bootstrap()
    err = info.value
    assert isinstance(err, p2pnode.P2PError) and isinstance(err, ConnectionError)
    assert addr in str(err)
    assert err.job == "bootstrap"
    assert [server for server, _ in err.errors] == [addr]
    assert "refused" in err.errors[0][1]
    with pytest.raises(p2pnode.RendezvousError, match=addr):
        net.advertise()


def test_a_bad_unl_says_why(make_net):
    net = make_net()
    with pytest.raises(p2pnode.UnlError, match="characters") as info:
        net.connect("not a unl")
    assert isinstance(info.value, ValueError)
    assert "not a unl" in str(info.value)
    # 52 characters of valid base64 whose checksum does not match.
    with pytest.raises(p2pnode.UnlError, match="UNL"):
        net.connect("A" * 52)


def test_bad_keyword_values_are_named():
    with pytest.raises(p2pnode.ConfigError, match='node_type="pasive"'):
        p2pnode.Net(node_type="pasive")
    with pytest.raises(p2pnode.ConfigError, match='rendezvous="127.0.0.1"'):
        p2pnode.Net(rendezvous="127.0.0.1")
    with pytest.raises(p2pnode.ConfigError, match="max_line_byte") as info:
        p2pnode.Net(config={"max_line_byte": 10})
    assert "max_line_bytes" in str(info.value), "the known settings are listed"
    with pytest.raises(p2pnode.ConfigError, match="needs|rendezvous server"):
        p2pnode.Net(node_type="simultaneous")
    with pytest.raises(ValueError):
        p2pnode.Net(passive_bind="eth0")
    with pytest.raises(TypeError, match="rendezvous"):
        p2pnode.Net(rendezvous=8000)


def test_cannot_listen_on_an_address_this_machine_does_not_have(make_net):
    # (A taken port is not an error: the node listens with SO_REUSEPORT, for hole punching.)
    net = make_net(passive_bind="192.0.2.1", passive_port=44999)
    with pytest.raises(p2pnode.BindError, match="192.0.2.1:44999") as info:
        net.start()
    assert isinstance(info.value, OSError)
    assert info.value.addr == "192.0.2.1:44999"


def test_line_errors_and_closed_connections(overlay_pair):
    _, bob = overlay_pair
    [con] = list(bob)
    with pytest.raises(p2pnode.LineError):
        con.send_line("two\nlines")
    with pytest.raises(p2pnode.LineError):
        bob.broadcast("a\rb")
    con.close()
    assert until(lambda: not con.is_open)
    with pytest.raises(p2pnode.ConnectionClosed) as info:
        con.send_line("too late")
    assert info.value.reason


def test_a_connect_timeout_raises_p2p_timeout(make_net, silent_listener):
    # A UNL whose port accepts but never answers: only our timeout ends the wait.
    real = make_net(passive_bind="127.0.0.1")  # the silent listener's address
    real.start()
    unl_text = str(real.unl_v2)
    real.stop()
    fake = _unl_with_port(unl_text, silent_listener[1])
    bob = make_net()
    bob.start()
    started = time.monotonic()
    with pytest.raises(p2pnode.P2PTimeout) as info:
        bob.connect(fake, timeout=0.3)
    assert time.monotonic() - started < 1.5
    assert isinstance(info.value, TimeoutError)
    assert info.value.what == "connect"


def test_calls_after_stop_raise_node_stopped(make_net):
    net = make_net()
    net.start()
    net.stop()
    net.stop()  # idempotent
    assert not net.is_running
    with pytest.raises(p2pnode.NodeStopped):
        net.bootstrap()
    with pytest.raises(p2pnode.NodeStopped):
        net.broadcast("hello")
    with pytest.raises(p2pnode.NodeStopped):
        net.unl


def _unl_with_port(unl: str, port: int) -> str:
    """`unl` with another port: the v2 layout of wire::unl (38 bytes: version, node id,
    types, port little-endian at 24..26, addresses; then the first 4 bytes of a double
    SHA-256 of the 34 before)."""
    import base64
    import hashlib

    raw = bytearray(base64.b64decode(unl))
    raw[24:26] = port.to_bytes(2, "little")
    payload = bytes(raw[:34])
    checksum = hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4]
    return base64.b64encode(payload + checksum).decode()
