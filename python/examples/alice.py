# PyP2P's README "Alice node", changed only in the import line and the server addresses:
# she listens on 127.0.0.1:44444 and finds others through a rendezvous server (ours:
# `cargo run --release -p rendezvous -- --listen 127.0.0.1:8000`; P2P_RENDEZVOUS overrides).
from p2pnode import *
import os
import time

#Setup Alice's p2p node.
alice = Net(passive_bind="127.0.0.1", passive_port=44444, node_type="passive", debug=1,
            rendezvous=[os.environ.get("P2P_RENDEZVOUS", "127.0.0.1:8000")])
alice.start()
alice.bootstrap()
alice.advertise()

#Event loop.
while 1:
    for con in alice:
        for reply in con:
            print(reply)

    time.sleep(1)
