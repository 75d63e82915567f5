"""alice or bob for test_netns.py, run inside a netns-sim host with this venv's Python.

    netns_peer.py alice SERVERS_JSON          prints "UNL <text>", then PyP2P's loop (it
                                              sleeps a second between passes) answering
                                              every line it gets
    netns_peer.py bob SERVERS_JSON UNL        connects to UNL, sends a line, prints the method
                                              and the reply

As in the Rust pair tests (tests/src/pairs.rs), both get only the server addresses: each
works out its own role and WAN address from the rendezvous.
"""

import json
import sys
import time

import p2pnode

role, servers = sys.argv[1], json.loads(sys.argv[2])
common = dict(
    rendezvous=servers["rendezvous"],
    dht_msg=servers["dht_msg"],
    ntp=servers["ntp"],
    debug=1,
)

if role == "alice":
    alice = p2pnode.Net(**common)
    alice.start()
    print("UNL", alice.unl, flush=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for con in alice:
            for reply in con:
                print("GOT", reply, con.method, flush=True)
                con.send_line("hello bob, from alice")
        time.sleep(1)
else:
    bob = p2pnode.Net(**common)
    bob.start()
    started = time.monotonic()
    con = bob.connect(sys.argv[3], timeout=30)
    took = time.monotonic() - started
    print("CONNECTED", con.method, f"{took * 1000:.1f}ms", flush=True)
    con.send_line("hello alice, from bob")
    print("REPLY", con.recv_line(timeout=10), flush=True)
    bob.stop()
