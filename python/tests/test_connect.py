"""Connect by UNL on loopback with the real dht-msg server: direct, reverse, PyP2P's events
callbacks, and a Rust `p2p-node connect` reaching a Python node whose loop is asleep."""

import json
import subprocess
import time

import pytest

import p2pnode
from conftest import binary, until


def test_connect_direct(dht_msg, make_net):
    # Different loopback addresses, so the UNLs' WAN addresses differ (not a LAN connect).
    alice = make_net(passive_bind="127.0.0.2", dht_msg=dht_msg.addr)
    alice.start()
    bob = make_net(passive_bind="127.0.0.1", dht_msg=dht_msg.addr)
    bob.start()
    unl = alice.unl
    # v3 (signed by alice's key: the connection is encrypted and must prove it); the v2 form
    # is what a PyP2P peer gets.
    assert isinstance(unl, str) and unl.startswith("unl3.") and unl.construct() == unl
    assert len(alice.unl_v2) == 52

    con = bob.connect(unl, timeout=10)
    assert con.method == "direct"
    assert con.direction == "outbound"
    assert con.addr == ("127.0.0.2", alice.passive_port)
    con.send_line("hello alice")
    assert until(lambda: alice.connection_count == 1)
    [inbound] = list(alice)
    assert inbound.recv_line(timeout=5) == "hello alice"
    inbound.send_line("hello bob")
    assert con.recv_line(timeout=5) == "hello bob"


def test_connect_reverse_through_the_mailbox(dht_msg, make_net):
    # bob is active (accepts nothing): alice asks him through his mailbox to dial her.
    alice = make_net(passive_bind="127.0.0.1", dht_msg=dht_msg.addr)
    alice.start()
    bob = make_net(passive_bind="127.0.0.3", node_type="active", dht_msg=dht_msg.addr)
    bob.start()
    con = alice.connect(bob.unl, timeout=10)
    assert con.method == "reverse"
    assert con.direction == "inbound"
    con.send_line("reverse works")
    assert until(lambda: bob.connection_count == 1)
    [to_alice] = list(bob)
    assert to_alice.recv_line(timeout=5) == "reverse works"


def test_pyp2p_events_callbacks_run_from_the_loop(dht_msg, make_net):
    alice = make_net(passive_bind="127.0.0.1", dht_msg=dht_msg.addr, net_type="direct")
    alice.start()
    bob = make_net(passive_bind="127.0.0.3", node_type="active",
                   dht_node=p2pnode.DHT(dht_msg.addr), net_type="direct")
    bob.start()
    calls = []
    events = {"success": lambda con: calls.append(("success", con)),
              "failure": lambda err: calls.append(("failure", err))}
    assert alice.unl.connect(bob.unl.construct(), events) is None
    assert until(lambda: (list(alice), calls)[1], 10)
    [(what, con)] = calls
    assert what == "success"
    assert isinstance(con, p2pnode.Connection) and con.method == "reverse"

    # A failure: a node that is gone. The callback gets the ConnectError.
    gone = make_net(passive_bind="127.0.0.4")
    gone.start()
    gone_unl = str(gone.unl)
    gone.stop()
    calls.clear()
    alice.connect(gone_unl, events=events)
    assert until(lambda: (list(alice), calls)[1], 15)
    [(what, err)] = calls
    assert what == "failure"
    assert isinstance(err, p2pnode.ConnectError)
    assert "direct" in err.reasons, err.reasons


def test_a_sleeping_python_loop_still_answers_a_reverse_connect(dht_msg, make_net):
    # The Python node is active and its loop sleeps: a Rust node connects to it by UNL, which
    # needs the Python node's thread to take the mailbox push and dial back at once.
    alice = make_net(passive_bind="127.0.0.5", node_type="active", dht_msg=dht_msg.addr)
    alice.start()
    proc = subprocess.Popen(
        [str(binary("p2p-node")), "connect", str(alice.unl), "--json", "--no-stdin",
         "--bind", "127.0.0.6", "--dht-msg", dht_msg.addr],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    time.sleep(3)  # the Python side does nothing at all meanwhile
    out, err = proc.communicate(timeout=20)
    outcome = json.loads(out.strip().splitlines()[-1])
    assert outcome["connected"], (out, err)
    assert outcome["method"] == "reverse"
    assert outcome["ms"] < 1000, outcome
    events = [e.kind for e in alice.events()]
    assert "reverse_requested" in events, events


def test_connect_failure_names_every_method(make_net):
    gone = make_net(passive_bind="127.0.0.2")
    gone.start()
    unl = str(gone.unl)
    gone.stop()
    bob = make_net()
    bob.start()
    with pytest.raises(p2pnode.ConnectError) as info:
        bob.connect(unl, timeout=15)
    err = info.value
    assert isinstance(err, ConnectionError)
    assert err.unl == unl
    assert "refused" in err.reasons["direct"], err.reasons
    assert "reverse" in err.reasons  # skipped: no mailbox server, with the reason
    assert {t["method"] for t in err.tries} >= {"lan", "direct", "reverse"}
    assert "direct" in str(err) and unl in str(err)
