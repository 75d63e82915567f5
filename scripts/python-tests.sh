#!/usr/bin/env bash
# Builds the Python package `p2pnode` (python/) into a fresh virtual environment and runs its
# pytest suite against the real server binaries (rendezvous, dht-msg, p2p-node, netns-sim),
# which are built first. Exits non-zero when anything fails (pytest's own exit code).
#
#   scripts/python-tests.sh                 # every test (the netns test needs root)
#   scripts/python-tests.sh -k overlay -x   # pytest arguments pass through
#
# Environment: PYTHON (default python3, >= 3.9), P2P_VENV (default target/python-venv),
# P2P_PYTHON_PROFILE (dev, the default, or release: the wheel's Cargo profile).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
venv=${P2P_VENV:-target/python-venv}

echo "python: building the server binaries the tests start (cargo build --workspace --bins)"
cargo build --workspace --bins --locked
scripts/python-venv.sh "$venv" "${P2P_PYTHON_PROFILE:-dev}"

echo "python: pytest (python/tests, against the installed wheel)"
status=0
# The pytest script, not `python -m pytest`: that would put python/ first on sys.path, and
# the source folder python/p2pnode (without the built module) would shadow the wheel.
(cd python && P2P_BIN_DIR="$PWD/../target/debug" "../$venv/bin/pytest" -v -p no:cacheprovider "$@") \
  || status=$?
echo "python: done in $(( $(date +%s) - started )) s (pytest exit code $status)"
exit "$status"
