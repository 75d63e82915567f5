#!/usr/bin/env bash
# Builds the Python package `p2pnode` (python/) as a wheel and installs it into a fresh
# virtual environment with maturin and pytest (from PyPI). Used by python-tests.sh and
# python-bench.sh.
#
#   scripts/python-venv.sh VENV PROFILE     # PROFILE: dev or release (the wheel's Cargo profile)
#
# Environment: PYTHON (default python3, >= 3.9).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:?usage: python-venv.sh VENV PROFILE}
profile=${2:?usage: python-venv.sh VENV PROFILE}
python=${PYTHON:-python3}
wheels=$venv-wheels

echo "python: $("$python" --version) from $(command -v "$python"); fresh venv $venv"
"$python" -m venv --clear "$venv"
echo "python: installing maturin and pytest from PyPI into the venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check 'maturin>=1.9.4,<2' 'pytest>=7'
echo "python: building the wheel (maturin, profile $profile, abi3 for CPython >= 3.9)"
rm -rf "$wheels"
"$venv/bin/maturin" build --locked --profile "$profile" --interpreter "$venv/bin/python" \
  --manifest-path python/Cargo.toml --out "$wheels"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$wheels"/p2pnode-*.whl
