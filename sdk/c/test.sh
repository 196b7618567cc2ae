#!/usr/bin/env bash
# Builds and tests the C SDK without cargo:
#   1. gcc and clang at -std=c99 -Wall -Wextra -Wpedantic -Wconversion -Werror:
#      the library in every option combination, the harness and the examples,
#      and the golden-vector test (sdk/c/tests/test_vectors.c) for each
#      combination that has a decoder;
#   2. AddressSanitizer + UBSan (gcc and clang): the golden-vector test, a
#      20,000-frame encode/decode round trip, and 40,000 mutated and random
#      datagrams through the decoder;
#   3. C++ (g++ and clang++, C++11 and C++17, -Werror) using the header;
#   4. arm-none-eabi-gcc -mcpu=cortex-m4 -mthumb -Os -Werror in every option
#      combination, then size.sh (the flash / stack table of the README).
# The differential test against the Rust crate and the live-server test are
# in tests/sdk_c.rs (cargo test --test sdk_c).
set -euo pipefail
cd "$(dirname "$0")"

out=${BUILD:-build}
mkdir -p "$out"
STRICT=(-std=c99 -Wall -Wextra -Wpedantic -Wconversion -Werror)
SAN=(-O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)
passed=0

for tool in gcc clang g++ clang++ arm-none-eabi-gcc arm-none-eabi-ld arm-none-eabi-size python3; do
  command -v "$tool" >/dev/null || { echo "sdk/c/test.sh: $tool is missing (scripts/setup.sh installs it)" >&2; exit 1; }
done

ok() { passed=$((passed + 1)); printf '  ok  %s\n' "$*"; }

python3 tests/gen_vectors.py ../../proto/vectors "$out/vectors.h"
nvalid=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))))' ../../proto/vectors/valid.json)
ninvalid=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))))' ../../proto/vectors/invalid.json)

# Runs a test_vectors build and checks that it went through every vector.
run_vectors() {
  local exe=$1 text
  text=$("$exe") || { echo "$text"; echo "sdk/c/test.sh: $exe failed" >&2; exit 1; }
  grep -q "golden vectors: $nvalid valid, $ninvalid invalid" <<<"$text" \
    || { echo "$text"; echo "sdk/c/test.sh: $exe skipped vectors" >&2; exit 1; }
  grep -qE '^[1-9][0-9]* passed, 0 failed$' <<<"$text" \
    || { echo "$text"; echo "sdk/c/test.sh: $exe: no clean summary" >&2; exit 1; }
  tail -n 1 <<<"$text"
}

echo "== strict builds (gcc, clang)"
variants=("" "-DFW_CRC_BITWISE" "-DFW_CRC_NIBBLE" "-DFW_NO_HMAC" "-DFW_NO_HMAC -DFW_CRC_BITWISE"
          "-DFW_NO_DECODE" "-DFW_NO_DECODE -DFW_NO_HMAC" "-DFW_NO_DECODE -DFW_NO_HMAC -DFW_CRC_NIBBLE")
for cc in gcc clang; do
  for v in "${variants[@]}"; do
    # shellcheck disable=SC2086
    "$cc" "${STRICT[@]}" -O2 $v -c fleetwire.c -o "$out/fw-$cc.o"
    if [[ $v != *FW_NO_DECODE* ]]; then
      # shellcheck disable=SC2086
      "$cc" "${STRICT[@]}" -O2 $v -I. -I"$out" tests/test_vectors.c fleetwire.c -o "$out/tv-$cc"
      ok "$cc ${v:-(defaults)}: $(run_vectors "$out/tv-$cc")"
    else
      ok "$cc $v: library builds"
    fi
  done
  "$cc" "${STRICT[@]}" -O2 -I. tests/harness.c fleetwire.c -o "$out/harness-$cc"
  "$cc" "${STRICT[@]}" -O2 -I. examples/linux_udp.c fleetwire.c -o "$out/linux_udp-$cc"
  ok "$cc: harness and examples/linux_udp.c build"
done

echo "== AddressSanitizer + UBSan (gcc, clang)"
for cc in gcc clang; do
  "$cc" "${STRICT[@]}" "${SAN[@]}" -I. -I"$out" tests/test_vectors.c fleetwire.c -o "$out/tv-san-$cc"
  ok "$cc sanitized vectors: $(run_vectors "$out/tv-san-$cc")"
  "$cc" "${STRICT[@]}" "${SAN[@]}" -I. tests/harness.c fleetwire.c -o "$out/harness-san-$cc"
  # The harness decodes every frame it encodes and exits non-zero on a
  # difference; decoding them again must accept all of them.
  "$out/harness-san-$cc" gen 17 20000 > "$out/frames-$cc.txt"
  n=$(cut -d' ' -f1,2 "$out/frames-$cc.txt" | "$out/harness-san-$cc" decode | grep -c '^ok ')
  [ "$n" -eq 20000 ] || { echo "sdk/c/test.sh: $cc: $n of 20000 frames decoded" >&2; exit 1; }
  ok "$cc sanitized: 20000 frames encoded, decoded back, decoded again"
  # Mutations (bit flips, truncations, insertions, fixed and broken CRCs)
  # and random bytes: the decoder must answer every line without a fault.
  python3 - "$out/frames-$cc.txt" 40000 > "$out/mutated-$cc.txt" <<'EOF'
import random, struct, sys
rng = random.Random(23)
frames = [bytes.fromhex(l.split(' ', 1)[0]) for l in open(sys.argv[1])]

TABLE = []
for i in range(256):
    c = i
    for _ in range(8):
        c = (c >> 1) ^ (0x82F63B78 & -(c & 1))
    TABLE.append(c)

def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c = (c >> 8) ^ TABLE[(c ^ b) & 0xFF]
    return c ^ 0xFFFFFFFF

for i in range(int(sys.argv[2])):
    if rng.random() < 0.1:
        d = bytearray(rng.getrandbits(8) for _ in range(rng.randrange(0, 1300)))
    else:
        d = bytearray(rng.choice(frames))
        for _ in range(rng.randrange(1, 4)):
            op = rng.randrange(4)
            if op == 0 and d:
                d[rng.randrange(len(d))] ^= 1 << rng.randrange(8)
            elif op == 1:
                del d[rng.randrange(len(d) + 1):]
            elif op == 2:
                d[rng.randrange(len(d) + 1):0] = bytes([rng.getrandbits(8)])
            elif d:
                d[rng.randrange(len(d))] = rng.choice([0, 1, 2, 0x7f, 0x80, 0xff])
    if len(d) >= 4 and rng.random() < 0.7:
        d[-4:] = struct.pack('<I', crc32c(d[:-4]))
    key = rng.choice(['-', '=', '00' * rng.randrange(1, 40)])
    print('%s %s' % (d.hex() or '-', key))
EOF
  n=$("$out/harness-san-$cc" decode < "$out/mutated-$cc.txt" | grep -cE '^(ok|err) ')
  [ "$n" -eq 40000 ] || { echo "sdk/c/test.sh: $cc: $n answers to 40000 datagrams" >&2; exit 1; }
  ok "$cc sanitized: 40000 mutated and random datagrams through the decoder"
done

echo "== C++"
gcc "${STRICT[@]}" -O2 -c fleetwire.c -o "$out/fw-cxx.o"
for cxx in g++ clang++; do
  for std in c++11 c++17; do
    "$cxx" -std=$std -Wall -Wextra -Wpedantic -Wconversion -Werror -O2 -I. tests/smoke.cpp "$out/fw-cxx.o" -o "$out/smoke-$cxx"
    ok "$cxx -std=$std: $("$out/smoke-$cxx")"
  done
done

echo "== Cortex-M4 (arm-none-eabi-gcc -mcpu=cortex-m4 -mthumb -Os)"
for v in "${variants[@]}"; do
  # shellcheck disable=SC2086
  arm-none-eabi-gcc "${STRICT[@]}" -mcpu=cortex-m4 -mthumb -Os $v -c fleetwire.c -o "$out/fw-m4.o"
  ok "cortex-m4 ${v:-(defaults)}: $(arm-none-eabi-size "$out/fw-m4.o" | awk 'NR == 2 {print $1 " bytes of text"}')"
done
BUILD="$out" ./size.sh > "$out/size.md"
ok "size.sh: $(grep -c '^| [^w-]' "$out/size.md") rows in $out/size.md"

echo "sdk/c: $passed passed, 0 failed"
