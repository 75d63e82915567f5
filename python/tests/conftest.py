"""Fixtures: the workspace's real server binaries on 127.0.0.1 (port 0, the address read from
their `listening addr=IP:PORT` log line) and nodes that are stopped after each test.

The binaries come from $P2P_BIN_DIR, else <repo>/target/debug (`cargo build --workspace`).
"""

import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import p2pnode

REPO = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
LISTENING = re.compile(r"listening.*addr=(\S+)")
START_TIMEOUT = 20.0

# Short timers, as the Rust loopback tests use (tests/src/lib.rs `loopback_node`).
FAST = {
    "rebootstrap_interval": 0.2,
    "alone_rebootstrap_delay": 0.2,
    "readvertise_interval": 0.5,
    "query_timeout": 2.0,
}


def bin_dir() -> Path:
    return Path(os.environ.get("P2P_BIN_DIR", REPO / "target" / "debug")).resolve()


def binary(name: str) -> Path:
    path = bin_dir() / name
    if not path.is_file():
        pytest.fail(f"{path} not built: run `cargo build --workspace` (or set P2P_BIN_DIR)")
    return path


class Server:
    """A workspace server binary started with `--listen 127.0.0.1:0`; `addr` is where it
    listens, `log()` what it logged."""

    def __init__(self, name: str, *args: str) -> None:
        self.name = name
        env = dict(os.environ, RUST_LOG="info", NO_COLOR="1")
        self.proc = subprocess.Popen(
            [str(binary(name)), "--listen", "127.0.0.1:0", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._lines: list = []
        self._found = threading.Event()
        self.addr = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._found.wait(START_TIMEOUT):
            self.stop()
            raise RuntimeError(f"{name} never logged its listening address: {self.log()}")

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            line = ANSI.sub("", line.rstrip("\n"))
            self._lines.append(line)
            match = LISTENING.search(line)
            if match and not self._found.is_set():
                self.addr = match.group(1)
                self._found.set()

    def log(self) -> str:
        return "\n".join(self._lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def rendezvous():
    server = Server("rendezvous")
    yield server
    server.stop()


@pytest.fixture
def dht_msg():
    server = Server("dht-msg")
    yield server
    server.stop()


@pytest.fixture
def make_net():
    """`make_net(**kwargs)`: a Net on 127.0.0.1 with short timers; stopped after the test."""
    nets = []

    def make(**kwargs):
        kwargs.setdefault("passive_bind", "127.0.0.1")
        config = dict(FAST)
        config.update(kwargs.pop("config", {}))
        net = p2pnode.Net(config=config, **kwargs)
        nets.append(net)
        return net

    yield make
    for net in nets:
        net.stop()


@pytest.fixture
def overlay_pair(rendezvous, make_net):
    """alice (advertised) and bob (bootstrapped from the rendezvous), connected to each
    other; returns (alice, bob)."""
    alice = make_net(rendezvous=rendezvous.addr)
    alice.start()
    alice.advertise()
    bob = make_net(rendezvous=rendezvous.addr)
    bob.start()
    bob.bootstrap()
    assert until(lambda: alice.connection_count == 1 and bob.connection_count == 1)
    return alice, bob


@pytest.fixture
def silent_listener():
    """A loopback port that accepts connections and never says anything."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock.getsockname()
    sock.close()


def until(condition, timeout: float = 10.0, step: float = 0.01):
    """Polls `condition()` until it is truthy (returns it) or `timeout` passes (returns it)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(step)


def run_python(code: str, **kwargs) -> subprocess.Popen:
    """Runs `code` in a fresh interpreter (this venv's), stdout and stderr piped; in the tests'
    folder, so that python/p2pnode (the sources, without the built module) is not imported
    instead of the installed wheel."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    kwargs.setdefault("cwd", Path(__file__).parent)
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kwargs,
    )
