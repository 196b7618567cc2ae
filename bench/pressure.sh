#!/usr/bin/env bash
# Around the receive path (HTTP pressure, journal cost, crashes): builds
# release binaries and runs bench/pressure.py.
#   bench/pressure.sh           the run written down in BENCHMARKS.md (~10 min)
#   bench/pressure.sh --quick   a short smoke run
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
exec python3 bench/pressure.py "$@"
