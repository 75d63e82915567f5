# PyP2P's README "Bob node", changed only in the import line and the server addresses: he
# listens on 127.0.0.2:44445 (another loopback address, as PyP2P used another interface),
# finds alice through the rendezvous server and sends her "test" every second.
from p2pnode import *
import os
import time

#Setup Bob's p2p node.
bob = Net(passive_bind="127.0.0.2", passive_port=44445, node_type="passive", debug=1,
          rendezvous=[os.environ.get("P2P_RENDEZVOUS", "127.0.0.1:8000")])
bob.start()
bob.bootstrap()
bob.advertise()

#Event loop.
while 1:
    for con in bob:
        con.send_line("test")

    time.sleep(1)
