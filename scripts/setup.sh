#!/usr/bin/env bash
# Installs what fleetwire's tests need on a fresh Debian machine. Idempotent:
# anything already present is left alone.
#   - Debian packages: prometheus (promtool and a real Prometheus for the
#     dashboard test), nats-server (JetStream test), python3 + pip,
#     chromium + chromium-driver (the headless-browser test, tests/browser.rs)
#   - PyPI: aioquic (the independent QUIC peer of the interop test), pytest,
#     and the Python SDK from sdk/python (reinstalled every run, so its tests
#     run this tree's code)
#   - rustup: clippy, rustfmt, and a bare-metal target for the no_std build
#   - cargo-fuzz (optional: a short fuzz run when it installs)
set -euo pipefail

sudo_if_needed() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "setup: need root (or sudo) for: $*" >&2; return 1; fi
}

need_apt=()
command -v promtool >/dev/null || need_apt+=(prometheus)
command -v prometheus >/dev/null || need_apt+=(prometheus)
command -v nats-server >/dev/null || need_apt+=(nats-server)
command -v python3 >/dev/null || need_apt+=(python3)
python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
command -v gcc >/dev/null || need_apt+=(gcc)
command -v g++ >/dev/null || need_apt+=(g++)
command -v clang >/dev/null || need_apt+=(clang libclang-rt-dev)
command -v arm-none-eabi-gcc >/dev/null || need_apt+=(gcc-arm-none-eabi libnewlib-arm-none-eabi)
command -v chromium >/dev/null || need_apt+=(chromium)
command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: apt-get install ${need_apt[*]}"
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    $(printf '%s\n' "${need_apt[@]}" | sort -u) >/dev/null
fi

# fleetwire asks for 16 MiB UDP receive buffers; Linux caps them at
# net.core.rmem_max (default 208 KiB). As root the server forces the size
# (SO_RCVBUFFORCE) anyway; raising the cap helps non-root runs. Containers
# may not allow it, which is fine.
if [ "$(cat /proc/sys/net/core/rmem_max 2>/dev/null || echo 0)" -lt 16777216 ]; then
  sudo_if_needed sysctl -q -w net.core.rmem_max=16777216 2>/dev/null \
    || echo "setup: could not raise net.core.rmem_max (tests run as root force their buffers)"
fi

if ! python3 -c 'import websockets' 2>/dev/null; then
  echo "setup: pip install websockets (the live stream's WebSocket test client)"
  python3 -m pip install -q websockets 2>/dev/null \
    || python3 -m pip install -q --break-system-packages websockets
fi

if ! python3 -c 'import aioquic' 2>/dev/null; then
  echo "setup: pip install aioquic"
  python3 -m pip install -q aioquic 2>/dev/null \
    || python3 -m pip install -q --break-system-packages aioquic
fi

if ! python3 -c 'import pytest' 2>/dev/null; then
  echo "setup: pip install pytest"
  python3 -m pip install -q pytest 2>/dev/null \
    || python3 -m pip install -q --break-system-packages pytest
fi

sdk_python="$(cd "$(dirname "$0")/.." && pwd)/sdk/python"
echo "setup: pip install ./sdk/python"
python3 -m pip install -q "$sdk_python" 2>/dev/null \
  || python3 -m pip install -q --break-system-packages "$sdk_python"

if command -v rustup >/dev/null; then
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup target list --installed 2>/dev/null | grep -q thumbv7em-none-eabihf \
    || rustup target add thumbv7em-none-eabihf \
    || echo "setup: no bare-metal target (the no_std build runs on the host only)"
fi

if ! command -v cargo-fuzz >/dev/null; then
  echo "setup: cargo install cargo-fuzz"
  cargo install -q --locked cargo-fuzz || echo "setup: cargo-fuzz did not install; fuzzing is skipped"
fi
echo "setup: done"
