#!/usr/bin/env bash
# Where `serve` spends its CPU at full speed: records a capture of DEVICES
# simulated devices x FRAMES frames, replays it at full speed (sender on
# core 0, serve on core 1) under `perf record`, and prints the engine's
# share of the samples (its symbols plus libm, which only the engine's
# geometry calls) beside user space and the kernel, then the top symbols.
#
#   bench/profile.sh [DEVICES [FRAMES [BINARY]]]     (defaults: 20000 75 target/release/fleetwire)
#
# Needs perf (Debian: linux-perf) and permission to profile (root, or
# kernel.perf_event_paranoid <= 1). Loopback only; stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICES=${1:-20000}
FRAMES=${2:-75}
BIN=${3:-target/release/fleetwire}
[ -x "$BIN" ] || cargo build --release -q
TMP=$(mktemp -d)
trap 'kill "${SERVE:-0}" 2>/dev/null || true; rm -rf "$TMP"' EXIT
free_port() { python3 -c 'import socket,sys; s=socket.socket(socket.AF_INET, int(sys.argv[1])); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' "$1"; }
UDP=$(free_port 2)
HTTP=$(free_port 1)
"$BIN" sim --target 127.0.0.1:9 --devices "$DEVICES" --rate 0 --frames "$FRAMES" --record "$TMP/cap.fwrec" --json >/dev/null
RUST_LOG=warn taskset -c 1 "$BIN" serve --udp-listen "127.0.0.1:$UDP" --http-listen "127.0.0.1:$HTTP" \
  --teltonika-listen off --osmand-listen off --quic-listen off --data-dir "$TMP/data" --snapshot false >/dev/null 2>&1 &
SERVE=$!
for _ in $(seq 100); do curl -sf "127.0.0.1:$HTTP/healthz" >/dev/null && break; sleep 0.1; done
perf record -F 2999 -g -p "$SERVE" -o "$TMP/perf.data" 2>/dev/null &
PERF=$!
sleep 0.5
taskset -c 0 "$BIN" replay "$TMP/cap.fwrec" --target "127.0.0.1:$UDP" --json >/dev/null
sleep 0.5
kill -INT "$PERF"
wait "$PERF" || true
curl -s "127.0.0.1:$HTTP/metrics" | grep -E '^fleetwire_(udp_receive_buffer_drops_total|datagrams_accepted_total\{transport="udp"\})'
perf report -i "$TMP/perf.data" --no-children --sort dso,sym -g none 2>/dev/null | grep -v '^#' | grep -v '^$' > "$TMP/report.txt"
python3 - "$TMP/report.txt" <<'EOF'
import re, sys
engine = libm = user = kernel = 0.0
rows = []
for line in open(sys.argv[1]):
    m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*)", line)
    if not m:
        continue
    share, dso, kind, sym = float(m.group(1)), m.group(2), m.group(3), m.group(4).strip()
    rows.append((share, dso, sym))
    if kind == "k":
        kernel += share
        continue
    user += share
    if "fleetwire::engine::" in sym:
        engine += share
    if dso.startswith("libm"):
        libm += share
print(f"engine: {engine:.1f} % of samples in its symbols + {libm:.1f} % in libm = {engine + libm:.1f} %; "
      f"user space {user:.1f} %, kernel {kernel:.1f} %")
for share, dso, sym in rows[:int(__import__("os").environ.get("TOP", "15"))]:
    print(f"  {share:5.2f} %  {dso:18} {sym}")
EOF
