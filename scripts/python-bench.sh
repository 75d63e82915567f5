#!/usr/bin/env bash
# The Python package's benchmark (python/bench/bench.py): lines/s from Python over one
# connection beside the Rust node's figure (p2p-node-bench throughput, same run), and the
# time to import, create, start and bootstrap a node. Release builds throughout.
#
#   scripts/python-bench.sh [--lines N] [--runs N] [--startup-runs N]
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${P2P_VENV:-target/python-bench-venv}
cargo build --release --locked -p rendezvous -p node --bins
scripts/python-venv.sh "$venv" release
cd python/bench
exec "../../$venv/bin/python" bench.py --bin-dir ../../target/release "$@"
