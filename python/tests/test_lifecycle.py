"""Ctrl-C and stop() during blocking calls return promptly; nothing is left after stop()."""

import gc
import os
import signal
import threading
import time

import pytest

import p2pnode
from conftest import run_python, until
from test_errors import _unl_with_port

# Each script prints READY just before its blocking call; Ctrl-C (SIGINT) follows.
BLOCKING = {
    # A connect to a port that accepts and never answers (waits up to the node's 10 s).
    "connect": """
import socket, p2pnode
silent = socket.socket(); silent.bind(("127.0.0.1", 0)); silent.listen(4)
net = p2pnode.Net(passive_bind="127.0.0.1"); net.start()
print("READY", flush=True)
net.connect(UNL)
""",
    # A bootstrap against a server that accepts and never answers (waits the query timeout).
    "bootstrap": """
import socket, p2pnode
silent = socket.socket(); silent.bind(("127.0.0.1", 0)); silent.listen(4)
host, port = silent.getsockname()
net = p2pnode.Net(passive_bind="127.0.0.1", rendezvous=f"{host}:{port}",
                  config={"query_timeout": 30.0})
net.start()
print("READY", flush=True)
net.bootstrap()
""",
    "wait": """
import p2pnode
net = p2pnode.Net(passive_bind="127.0.0.1"); net.start()
print("READY", flush=True)
net.wait()
""",
}


@pytest.mark.parametrize("call", sorted(BLOCKING))
def test_ctrl_c_interrupts_a_blocking_call_promptly(call, make_net, silent_listener):
    code = BLOCKING[call]
    if "UNL" in code:
        real = make_net(passive_bind="127.0.0.1")
        real.start()
        unl = _unl_with_port(str(real.unl_v2), silent_listener[1])
        real.stop()
        code = f"UNL = {unl!r}\n" + code
    proc = run_python(code)
    try:
        assert proc.stdout.readline().strip() == "READY", proc.stderr.read()
        time.sleep(0.3)  # well inside the call
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=5)
        took = time.monotonic() - sent
    finally:
        proc.kill()
    stderr = proc.stderr.read()
    assert "KeyboardInterrupt" in stderr, stderr
    assert took < 1.0, f"{call} took {took:.2f} s to return after Ctrl-C"


def test_stop_from_another_thread_ends_a_blocking_call(make_net, silent_listener):
    real = make_net(passive_bind="127.0.0.1")
    real.start()
    unl = _unl_with_port(str(real.unl_v2), silent_listener[1])
    real.stop()
    net = make_net()
    net.start()
    timer = threading.Timer(0.3, net.stop)
    timer.start()
    started = time.monotonic()
    with pytest.raises(p2pnode.NodeStopped):
        net.connect(unl)
    assert time.monotonic() - started < 1.5
    timer.join()
    assert not net.is_running


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_no_thread_or_socket_is_left_after_stop(rendezvous, dht_msg):
    gc.collect()
    threads, fds = _threads(), _fds()
    config = {"rebootstrap_interval": 0.2, "alone_rebootstrap_delay": 0.2}
    alice = p2pnode.Net(passive_bind="127.0.0.1", rendezvous=rendezvous.addr,
                        dht_msg=dht_msg.addr, config=config)
    bob = p2pnode.Net(passive_bind="127.0.0.3", rendezvous=rendezvous.addr,
                      dht_msg=dht_msg.addr, config=config)
    alice.start()
    alice.advertise()
    bob.start()
    bob.bootstrap()
    con = bob.connect(alice.unl, timeout=10)
    con.send_line("hello")
    assert until(lambda: alice.connection_count >= 1)
    assert _threads() >= threads + 2 and _fds() > fds
    alice.stop()
    bob.stop()
    assert _threads() == threads, "every node thread has ended when stop() returns"
    assert until(lambda: _fds() == fds, 2), f"{_fds()} fds open, {fds} before"


def test_the_context_manager_starts_and_stops(make_net):
    threads = _threads()
    with p2pnode.Net(passive_bind="127.0.0.1") as net:
        assert net.is_running
        assert net.local_addr[0] == "127.0.0.1"
        assert _threads() == threads + 1
    assert not net.is_running
    assert _threads() == threads


def test_a_dropped_net_stops_its_thread():
    threads = _threads()
    net = p2pnode.Net(passive_bind="127.0.0.1")
    net.start()
    assert _threads() == threads + 1
    del net
    gc.collect()
    assert until(lambda: _threads() == threads, 5)
