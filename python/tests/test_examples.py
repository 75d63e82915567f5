"""PyP2P's README examples (python/examples), run as they are against our real servers."""

import gc
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# The fixed ports PyP2P's examples listen on (alice, bob). They lie in the kernel's ephemeral
# range, so a connection an earlier test left open (a `Net` still referenced from a kept
# traceback, say) can hold one as its local port: collect such garbage and wait for them.
EXAMPLE_PORTS = [("127.0.0.1", 44444), ("127.0.0.2", 44445)]


def wait_for_example_ports(timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    for addr, port in EXAMPLE_PORTS:
        while True:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((addr, port))
                break
            except OSError as e:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"{addr}:{port}, the examples' port, stays in use: {e}"
                    ) from None
                gc.collect()
                time.sleep(0.1)
            finally:
                s.close()


class Script:
    """An example running in its own interpreter; stdout lines collected, stderr (the node's
    debug log) in a file."""

    def __init__(self, name: str, **env: str) -> None:
        self.name = name
        self.log = tempfile.TemporaryFile(mode="w+")
        self.lines: list = []
        self.proc = subprocess.Popen(
            [sys.executable, str(EXAMPLES / name)],
            stdout=subprocess.PIPE,
            stderr=self.log,
            stdin=subprocess.DEVNULL,
            text=True,
            cwd=EXAMPLES,
            env=dict(os.environ, PYTHONUNBUFFERED="1", **env),
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def wait_for(self, what: str, where: str = "stdout", timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = "\n".join(self.lines) if where == "stdout" else self.stderr()
            if what in text:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(
            f"{self.name}: no {what!r} on {where} (exit {self.proc.poll()}):\n"
            f"stdout: {self.lines}\nstderr: {self.stderr()[-3000:]}"
        )

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.log.close()


def test_alice_prints_what_bob_sends(rendezvous):
    wait_for_example_ports()
    alice = Script("alice.py", P2P_RENDEZVOUS=rendezvous.addr)
    bob = None
    try:
        alice.wait_for("advertised", where="stderr")
        bob = Script("bob.py", P2P_RENDEZVOUS=rendezvous.addr)
        try:
            alice.wait_for("test")
        except AssertionError as e:
            raise AssertionError(f"{e}\nbob's stderr: {bob.stderr()[-3000:]}") from None
        assert set(alice.lines) == {"test"}, alice.lines
    finally:
        alice.stop()
        if bob:
            bob.stop()


def test_direct_connect_by_unl_with_callbacks(dht_msg):
    wait_for_example_ports()
    script = Script("direct_connect.py", P2P_DHT_MSG=dht_msg.addr)
    try:
        script.wait_for("Alice successfully connected to Bob.")
        script.wait_for("Sup Bob.")
        assert "reverse" in script.stderr(), "bob was asked through his mailbox"
    finally:
        script.stop()
