"""The overlay on loopback with a real rendezvous server: PyP2P's loop shape, broadcast."""

import time

from conftest import until


def test_two_nodes_exchange_lines_through_for_con_in_net(rendezvous, make_net):
    alice = make_net(rendezvous=rendezvous.addr)
    alice.start()
    assert alice.bootstrap()["offered"] == 0
    assert alice.advertise() > 0
    bob = make_net(rendezvous=[rendezvous.addr])
    bob.start()
    report = bob.bootstrap()
    assert report == {"server": rendezvous.addr, "offered": 1, "dialing": 1}

    # PyP2P's loop: bob sends on every connection, alice prints what arrives.
    got_alice, got_bob = [], []
    deadline = time.monotonic() + 10
    while (not got_alice or not got_bob) and time.monotonic() < deadline:
        for con in bob:
            con.send_line("hello alice")
            got_bob.extend(con)
        for con in alice:
            for reply in con:
                got_alice.append(reply)
                con.send_line("hello bob")
        time.sleep(0.05)
    assert got_alice and set(got_alice) == {"hello alice"}
    assert got_bob and set(got_bob) == {"hello bob"}

    [con] = list(alice)
    assert con.addr[0] == "127.0.0.1"
    assert con.direction == "inbound"
    assert con.method is None  # an overlay connection, not a connect by UNL
    assert con.is_open and con.close_reason is None
    assert list(alice)[0] is con, "the same object on every pass"


def test_a_broadcast_reaches_every_other_node_exactly_once(rendezvous, make_net):
    a = make_net(rendezvous=rendezvous.addr, max_outbound=2)
    a.start()
    a.advertise()
    b = make_net(rendezvous=rendezvous.addr, max_outbound=2)
    b.start()
    b.advertise()
    b.bootstrap()
    c = make_net(rendezvous=rendezvous.addr, max_outbound=2)
    c.start()
    c.advertise()
    c.bootstrap()
    # A triangle: every broadcast could arrive twice at each node without the seen-cache.
    assert until(lambda: all(n.connection_count == 2 for n in (a, b, c)), 10), [
        n.connection_count for n in (a, b, c)
    ]

    received = {"a": [], "b": [], "c": []}

    def drain(seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for name, net in (("a", a), ("b", b), ("c", c)):
                for con in net:
                    received[name].extend(con)
            time.sleep(0.01)

    b.broadcast("flood from b")
    drain(0.1)
    assert until(lambda: (drain(0.05), received["a"] and received["c"])[1], 5)
    drain(0.5)  # anything duplicated would have arrived by now
    assert received == {"a": ["flood from b"], "b": [], "c": ["flood from b"]}


def test_connections_keep_their_lines_after_the_peer_closes(overlay_pair):
    alice, bob = overlay_pair
    [to_alice] = list(bob)
    [to_bob] = list(alice)
    for i in range(100):
        to_alice.send_line(f"line {i}")
    to_alice.close()
    assert until(lambda: not to_alice.is_open)
    lines = []
    while True:
        line = to_bob.recv_line(timeout=5)
        if line is None:
            break
        lines.append(line)
    assert lines == [f"line {i}" for i in range(100)]
    assert not to_bob.is_open
    assert to_bob.close_reason
    # (bob, alone, bootstraps again and may be connected anew: another connection.)
    assert to_bob not in list(alice), "a closed connection with nothing unread is not shown"
