#!/usr/bin/env bash
# Flash and stack use of the C SDK on a Cortex-M4, as a Markdown table.
#
#   sdk/c/size.sh            (needs arm-none-eabi-gcc and python3)
#
# Each row compiles fleetwire.c with arm-none-eabi-gcc -mcpu=cortex-m4
# -mthumb -Os -ffunction-sections -fdata-sections (plus the row's FW_*
# options), links the object partially with --gc-sections keeping only the
# row's entry points (so only the code they reach counts, as in a firmware
# linked with --gc-sections), and reports:
#   flash  text + rodata of what is kept (code, CRC table, SHA-256 constants)
#   RAM    data + bss (the library keeps no state: 0)
#   stack  the deepest call chain from an entry point, from -fstack-usage /
#          -fcallgraph-info=su (every function's frame is static); the one
#          indirect call (the payload writer an encoder passes to
#          encode_frame) is resolved to that encoder's writer
# The C library's memcpy / memcmp / memset / strlen are not counted (they
# are in every firmware already; newlib-nano's take some tens of bytes).
set -euo pipefail
cd "$(dirname "$0")"

CC=${ARM_CC:-arm-none-eabi-gcc}
LD=${ARM_LD:-arm-none-eabi-ld}
SIZE=${ARM_SIZE:-arm-none-eabi-size}
out=${BUILD:-build}/size
rm -rf "$out"
mkdir -p "$out"
CFLAGS=(-std=c99 -Wall -Wextra -Wpedantic -Wconversion -Werror -mcpu=cortex-m4 -mthumb -Os
        -ffunction-sections -fdata-sections -fstack-usage -fcallgraph-info=su)

position=(fw_device_init fw_device_position)
encoders=(fw_encode_position fw_encode_monitoring fw_encode_event fw_encode_hello fw_encode_batch
          fw_encode fw_device_init fw_device_resume fw_device_save_due fw_device_position
          fw_device_monitoring fw_device_event fw_device_hello fw_device_batch fw_crc32c
          fw_readings_begin fw_readings_next fw_samples_begin fw_samples_next)
decoder=(fw_decode fw_frame_verify fw_readings_begin fw_readings_next fw_samples_begin
         fw_samples_next)

# row NAME "FW options" entry points...
rows=()
row() {
  local name=$1 defs=$2
  shift 2
  local tag=$((${#rows[@]} + 1))
  local dir="$out/$tag"
  mkdir -p "$dir"
  # shellcheck disable=SC2086
  (cd "$dir" && "$CC" "${CFLAGS[@]}" $defs -c ../../../fleetwire.c -o fw.o)
  local keep=()
  for s in "$@"; do keep+=(-u "$s"); done
  "$LD" -r --gc-sections "${keep[@]}" -o "$dir/kept.o" "$dir/fw.o"
  "$SIZE" -A "$dir/kept.o" > "$dir/sections.txt"
  printf '%s\n' "$@" > "$dir/roots.txt"
  rows+=("$tag|$name|$defs")
}

row "Position sender (fw_device_init + fw_device_position)" "-DFW_NO_DECODE -DFW_NO_HMAC -DFW_CRC_BITWISE" "${position[@]}"
row "Position sender (fw_device_init + fw_device_position)" "-DFW_NO_DECODE -DFW_NO_HMAC -DFW_CRC_NIBBLE" "${position[@]}"
row "Position sender (fw_device_init + fw_device_position)" "-DFW_NO_DECODE -DFW_NO_HMAC" "${position[@]}"
row "Position sender (fw_device_init + fw_device_position)" "-DFW_NO_DECODE" "${position[@]}"
row "every encoder + sequence helper + CRC" "-DFW_NO_DECODE -DFW_NO_HMAC -DFW_CRC_BITWISE" "${encoders[@]}"
row "every encoder + sequence helper + CRC" "-DFW_NO_DECODE -DFW_NO_HMAC -DFW_CRC_NIBBLE" "${encoders[@]}"
row "every encoder + sequence helper + CRC" "-DFW_NO_DECODE -DFW_NO_HMAC" "${encoders[@]}"
row "every encoder + sequence helper + CRC" "-DFW_NO_DECODE -DFW_CRC_BITWISE" "${encoders[@]}"
row "every encoder + sequence helper + CRC" "-DFW_NO_DECODE" "${encoders[@]}"
row "decoder (fw_decode + fw_frame_verify + iterators)" "-DFW_NO_HMAC" "${decoder[@]}"
row "decoder (fw_decode + fw_frame_verify + iterators)" "" "${decoder[@]}"
row "fw_result_str (labels, optional)" "-DFW_NO_DECODE -DFW_NO_HMAC" fw_result_str

printf '%s\n' "${rows[@]}" > "$out/rows.txt"
echo "$("$CC" --version | head -n 1); flags: ${CFLAGS[*]}" > "$out/compiler.txt"

python3 - "$out" <<'EOF'
import os
import re
import sys

out = sys.argv[1]


def callgraph(ci_path):
    """Stack bytes per function and call edges from a -fcallgraph-info=su file."""
    frames, calls, qualifiers = {}, {}, {}
    node = re.compile(r'node: \{ title: "([^"]+)" label: "([^"]*)"')
    edge = re.compile(r'edge: \{ sourcename: "([^"]+)" targetname: "([^"]+)"')
    with open(ci_path) as fh:
        for line in fh:
            m = node.search(line)
            if m:
                title, label = m.group(1), m.group(2)
                name = title.split(":")[-1]
                s = re.search(r"(\d+) bytes \((\w+)\)", label)
                if s:
                    frames[name] = int(s.group(1))
                    qualifiers[name] = s.group(2)
                continue
            m = edge.search(line)
            if m:
                src = m.group(1).split(":")[-1]
                dst = m.group(2).split(":")[-1]
                calls.setdefault(src, set()).add(dst)
    return frames, calls, qualifiers


KINDS = ("position", "monitoring", "event", "hello", "batch")


def indirect_targets(root):
    """What encode_frame's indirect call can reach from this entry point."""
    for k in KINDS:
        if root.endswith("_" + k):
            return {"put_" + k}
    if root == "fw_encode":
        return {"put_" + k for k in KINDS}
    return set()


def depth(fn, frames, calls, root, stack, externals):
    if fn in stack:
        raise SystemExit("size.sh: recursion through " + " -> ".join(stack + [fn]))
    if fn == "__indirect_call":
        targets = indirect_targets(root) & set(frames)
        return max((depth(t, frames, calls, root, stack, externals) for t in targets), default=0)
    if fn not in frames:
        externals.add(fn)
        return 0
    below = [depth(c, frames, calls, root, stack + [fn], externals) for c in calls.get(fn, ())]
    return frames[fn] + max(below, default=0)


def flash(sections):
    text = rodata = ram = 0
    with open(sections) as fh:
        for line in fh:
            parts = line.split()
            if len(parts) < 2 or not parts[1].isdigit():
                continue
            name, size = parts[0], int(parts[1])
            if name.startswith(".text"):
                text += size
            elif name.startswith(".rodata"):
                rodata += size
            elif name.startswith((".data", ".bss")):
                ram += size
    return text, rodata, ram


print("| what is linked | options | flash: text + rodata (bytes) | RAM | worst-case stack (bytes) |")
print("|---|---|--:|--:|--:|")
externals = set()
with open(os.path.join(out, "rows.txt")) as fh:
    rows = [line.rstrip("\n").split("|") for line in fh if line.strip()]
for tag, name, defs in rows:
    d = os.path.join(out, tag)
    frames, calls, qualifiers = callgraph(os.path.join(d, "fw.ci"))
    dynamic = [f for f, q in qualifiers.items() if q != "static"]
    if dynamic:
        raise SystemExit("size.sh: functions with dynamic stack: %s" % dynamic)
    with open(os.path.join(d, "roots.txt")) as r:
        roots = [x.strip() for x in r if x.strip()]
    worst = max(depth(r, frames, calls, r, [], externals) for r in roots)
    text, rodata, ram = flash(os.path.join(d, "sections.txt"))
    opts = " ".join("`%s`" % o[2:] for o in defs.split()) or "(defaults)"
    print("| %s | %s | %d + %d = **%d** | %d | %d |" % (name, opts, text, rodata, text + rodata,
                                                        ram, worst))
print()
with open(os.path.join(out, "compiler.txt")) as fh:
    print("Measured with %s." % fh.read().strip())
print("Not counted: the C library's %s." % ", ".join(sorted(externals)))
EOF
