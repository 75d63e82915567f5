"""alice and bob as Python processes behind two NATs (netns-sim: real nftables NATs, real
servers on `pub`), connecting by UNL: a hole punch between two port-restricted NATs, the relay
when bob's NAT is symmetric. Needs root: skipped without it, unless CI is set (then it fails).

alice's loop sleeps a second between passes (PyP2P's example shape): the punch is answered by
her node's own thread meanwhile.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import binary

PEER = Path(__file__).resolve().parent / "netns_peer.py"


def _preconditions() -> None:
    if os.geteuid() == 0:
        return
    message = "the netns test needs root (run the tests with sudo)"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI is set, so this fails)")
    pytest.skip(message)


class Lab:
    """A netns-sim lab (`netns-sim up`), torn down by `down()` (`netns-sim down PREFIX`,
    which kills every process in its namespaces)."""

    def __init__(self, nat_a: str, nat_b: str) -> None:
        self.sim = str(binary("netns-sim"))
        self.procs: list = []
        self.logs: dict = {}
        up = subprocess.run(
            [self.sim, "up", "--nat-a", nat_a, "--nat-b", nat_b, "--ntp"],
            capture_output=True, text=True, timeout=120,
        )
        assert up.returncode == 0, f"netns-sim up failed: {up.stderr}"
        self.prefix = up.stdout.strip().splitlines()[-1]
        status = subprocess.run(
            [self.sim, "status", "--lab", self.prefix, "--json"],
            capture_output=True, text=True, timeout=30, check=True,
        )
        self.addr = {h["name"]: h["addr"] for h in json.loads(status.stdout)["hosts"]}

    def spawn(self, host: str, name: str, *argv: str) -> subprocess.Popen:
        log = tempfile.TemporaryFile(mode="w+")
        self.logs[name] = log
        proc = subprocess.Popen(
            [self.sim, "exec", "--lab", self.prefix, host, "--", *argv],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True,
            cwd=PEER.parent, env=dict(os.environ, PYTHONUNBUFFERED="1", NO_COLOR="1"),
        )
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        self.logs[name].seek(0)
        return self.logs[name].read()

    def wait_log(self, name: str, what: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while what not in self.log(name):
            assert time.monotonic() < deadline, f"{name}: no {what!r}: {self.log(name)}"
            time.sleep(0.02)

    def down(self) -> None:
        subprocess.run([self.sim, "down", self.prefix], capture_output=True, timeout=60)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _line(proc: subprocess.Popen, prefix: str, timeout: float) -> str:
    """The first stdout line starting with `prefix` (other lines are skipped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith(prefix):
            return line.rstrip("\n")
    raise AssertionError(f"no {prefix!r} line (exit {proc.poll()})")


@pytest.mark.parametrize(
    "nat_a,nat_b,method",
    [("port-restricted", "port-restricted", "punch"), ("port-restricted", "symmetric", "relay")],
)
def test_python_alice_and_bob_connect_by_unl_behind_two_nats(nat_a, nat_b, method):
    _preconditions()
    lab = Lab(nat_a, nat_b)
    try:
        pub = lab.addr["pub"]
        servers = {
            "rendezvous": f"{pub}:8000",
            "dht_msg": f"{pub}:8090",
            "forwarding_check": f"http://{pub}:8080",
            "ntp": f"{pub}:123",
        }
        for name, args in [
            ("rendezvous", ["--listen", servers["rendezvous"]]),
            ("dht-msg", ["--listen", servers["dht_msg"]]),
            ("forwarding-check", ["--listen", f"{pub}:8080", "--connect-timeout", "300ms"]),
        ]:
            lab.spawn("pub", name, str(binary(name)), *args)
            lab.wait_log(name, "listening")
        config = json.dumps(servers)
        alice = lab.spawn("alice", "alice", sys.executable, str(PEER), "alice", config)
        unl = _line(alice, "UNL ", 30).split()[1]
        bob = lab.spawn("bob", "bob", sys.executable, str(PEER), "bob", config, unl)
        connected = _line(bob, "CONNECTED ", 40)
        reply = _line(bob, "REPLY ", 15)
        got = _line(alice, "GOT ", 15)
        print(f"{nat_a} / {nat_b}: {connected}")
        assert connected.split()[1] == method, (connected, lab.log("bob"))
        assert reply == "REPLY hello bob, from alice", lab.log("bob")
        assert got.startswith("GOT hello alice, from bob"), lab.log("alice")
        assert bob.wait(15) == 0, lab.log("bob")
    except BaseException:
        for name in lab.logs:
            print(f"--- {name} ---\n{lab.log(name)[-4000:]}")
        raise
    finally:
        lab.down()
