"""p2pnode benchmark: lines/s from Python over one connection, beside the Rust node's own
figure measured in the same run, and the time to import, create, start and bootstrap a node.

    scripts/python-bench.sh                      # builds the release wheel and binaries first
    python bench/bench.py --lines 1000000        # with p2pnode installed and the binaries built

Throughput: a sender process (Python: `con.send_line(line)` in a loop) and this process as
the receiver (Python: `for con in net: for reply in con: ...`, with `net.wait()` between
passes), connected by UNL on loopback; 100-byte lines as `p2p-node-bench throughput` uses.
Start-up: a fresh interpreter each time, against a real rendezvous server with one node.
"""

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SENDER = r"""
import sys, time, p2pnode
unl, lines, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
net = p2pnode.Net(passive_bind="127.0.0.1")
net.start()
con = net.connect(unl, timeout=10)
line = "x" * size
started = time.perf_counter()
for _ in range(lines):
    con.send_line(line)
took = time.perf_counter() - started
print(f"SENT {lines} {took:.6f}", flush=True)
con.recv_line(timeout=60)   # the receiver says when it has everything
net.stop()
"""

STARTUP = r"""
import sys, time
t0 = time.perf_counter()
import p2pnode
t1 = time.perf_counter()
net = p2pnode.Net(passive_bind="127.0.0.1", rendezvous=sys.argv[1])
t2 = time.perf_counter()
net.start()
t3 = time.perf_counter()
report = net.bootstrap()
t4 = time.perf_counter()
assert report["offered"] == 1, report
net.stop()
t5 = time.perf_counter()
print(f"TIMES {t1-t0:.6f} {t2-t1:.6f} {t3-t2:.6f} {t4-t3:.6f} {t5-t4:.6f}", flush=True)
"""


def python_throughput(lines: int, size: int) -> tuple:
    import p2pnode

    net = p2pnode.Net(passive_bind="127.0.0.1")
    net.start()
    sender = subprocess.Popen(
        [sys.executable, "-c", SENDER, str(net.unl), str(lines), str(size)],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent,
    )
    got = 0
    started = None
    busy = 0.0  # time spent in the `for` loops themselves (not waiting for lines)
    deadline = time.monotonic() + 300
    con_used = None
    while got < lines and time.monotonic() < deadline:
        net.wait(1.0)
        t0 = time.perf_counter()
        for con in net:
            for reply in con:
                if started is None:
                    started = t0
                got += 1
                con_used = con
        busy += time.perf_counter() - t0
    took = time.perf_counter() - started
    con_used.send_line("done")
    out, _ = sender.communicate(timeout=60)
    sent, send_took = out.split()[1:3]
    net.stop()
    assert got == lines, f"only {got} of {lines} lines arrived"
    return lines / took, int(sent) / float(send_took), lines / busy


def rust_throughput(lines: int, size: int) -> float:
    bench = REPO / "target" / "release" / "p2p-node-bench"
    if not bench.is_file():
        subprocess.run(["cargo", "build", "--release", "-p", "node", "--bin", "p2p-node-bench"],
                       cwd=REPO, check=True)
    out = subprocess.run([str(bench), "throughput", "--lines", str(lines), "--bytes", str(size)],
                         capture_output=True, text=True, check=True).stdout
    match = re.search(r"= (\d+) lines/s", out)
    assert match, out
    return float(match.group(1))


def startup(bin_dir: Path, runs: int) -> list:
    import p2pnode

    env = dict(os.environ, RUST_LOG="info", NO_COLOR="1")
    server = subprocess.Popen([str(bin_dir / "rendezvous"), "--listen", "127.0.0.1:0"],
                              stderr=subprocess.PIPE, text=True, env=env)
    try:
        addr = None
        for line in server.stderr:
            match = re.search(r"listening.*addr=(\S+)", re.sub(r"\x1b\[[0-9;]*m", "", line))
            if match:
                addr = match.group(1)
                break
        peer = p2pnode.Net(passive_bind="127.0.0.2", rendezvous=addr)
        peer.start()
        peer.advertise()
        times = []
        for _ in range(runs):
            out = subprocess.run([sys.executable, "-c", STARTUP, addr], capture_output=True,
                                 text=True, check=True, cwd=Path(__file__).parent).stdout
            times.append([float(x) for x in out.split()[1:]])
        peer.stop()
        return times
    finally:
        server.kill()
        server.wait()


def median(values: list) -> float:
    values = sorted(values)
    return values[len(values) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--bytes", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3, help="throughput runs (best is shown)")
    parser.add_argument("--startup-runs", type=int, default=10)
    parser.add_argument("--bin-dir", default=str(REPO / "target" / "release"))
    args = parser.parse_args()

    results = [python_throughput(args.lines, args.bytes) for _ in range(args.runs)]
    recv = [r for r, _, _ in results]
    send = [s for _, s, _ in results]
    loop = [b for _, _, b in results]
    rust = [rust_throughput(args.lines * 2, args.bytes) for _ in range(args.runs)]
    print(f"throughput, {args.bytes}-byte lines over one loopback connection "
          f"(best / worst of {args.runs}):")
    print(f"  python receiver (for reply in con): {max(recv):>12,.0f} / {min(recv):,.0f} lines/s")
    print(f"  python sender (con.send_line):      {max(send):>12,.0f} / {min(send):,.0f} lines/s")
    print(f"  receiver loop alone (its busy time): {max(loop):>11,.0f} / {min(loop):,.0f} lines/s")
    print(f"  rust p2p-node-bench throughput:     {max(rust):>12,.0f} / {min(rust):,.0f} lines/s")
    print("  PyP2P 0.8.3 (measured earlier on this machine kind): 26,000-45,000 lines/s")

    times = startup(Path(args.bin_dir), args.startup_runs)
    names = ["import p2pnode", "Net(...)", "start()", "bootstrap()", "stop()"]
    print(f"start-up, median of {len(times)} fresh interpreters (ms):")
    for i, name in enumerate(names):
        print(f"  {name:<16} {median([t[i] for t in times]) * 1000:8.2f}")
    total = median([sum(t[:4]) for t in times]) * 1000
    print(f"  {'import..bootstrap':<16} {total:8.2f}")


if __name__ == "__main__":
    main()
