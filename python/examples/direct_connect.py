# PyP2P's README "Direct connect", changed only in the import line and the server addresses
# (PyP2P's DHT() is our dht-msg mailbox server:
# `cargo run --release -p dht-msg -- --listen 127.0.0.1:8090`; P2P_DHT_MSG overrides).
# Alice is passive, Bob active (he accepts no connections), so Alice's connect asks Bob
# through his mailbox to connect to her: a reverse connect.
from p2pnode import *
import os
import time

DHT_MSG = os.environ.get("P2P_DHT_MSG", "127.0.0.1:8090")

#Start Alice's direct server.
alice_dht = DHT(DHT_MSG)
alice_direct = Net(passive_bind="127.0.0.1", passive_port=44444, net_type="direct", dht_node=alice_dht, debug=1)
alice_direct.start()

#Start Bob's direct server.
bob_dht = DHT(DHT_MSG)
bob_direct = Net(passive_bind="127.0.0.2", passive_port=44445, net_type="direct", node_type="active", dht_node=bob_dht, debug=1)
bob_direct.start()

#Callbacks.
def success(con):
    print("Alice successfully connected to Bob.")
    con.send_line("Sup Bob.")

def failure(con):
    print("Alice failed to connect to Bob\a", con)

events = {
    "success": success,
    "failure": failure
}

#Have Alice connect to Bob.
alice_direct.unl.connect(bob_direct.unl.construct(), events)

#Event loop.
while 1:
    #Bob get reply.
    for con in bob_direct:
        for reply in con:
            print(reply)

    #Alice accept con.
    for con in alice_direct:
        x = 1

    time.sleep(0.5)
