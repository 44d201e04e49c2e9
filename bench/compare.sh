#!/usr/bin/env bash
# Runs Miss Manners and Waltz in CLIPS 6.30 and in Stoa for every data size,
# and prints firing counts side by side, with the result check (Manners: a
# valid seating, and the same one as CLIPS; Waltz: the same final edge labels,
# junction types), whether each rule fired as often as in CLIPS, and whether
# the sequence of fired rule names is the same as CLIPS's, firing by firing.
#
#   bench/compare.sh [manners|waltz|all] [STOA_BINARY]
#
# Needs `clips` (apt-get install clips) and a release build of stoa
# (default: target/release/stoa; build with `cargo build --release`).
# STOA_TIMEOUT (seconds, default 120) bounds each Stoa run. Outputs go to
# $OUT (default /tmp/stoa-bench).
set -u
cd "$(dirname "$0")/.."
what=${1:-all}
stoa=${2:-target/release/stoa}
data=${BENCH_DATA:-/work/shared/bench-data}
out=${OUT:-/tmp/stoa-bench}
limit=${STOA_TIMEOUT:-120}
mkdir -p "$out"
python3 bench/tools/fct2json.py --all > /dev/null

run() { # prog size
  prog=$1; n=$2
  facts=bench/$prog/data/$prog$n.json
  bench/clips/run.sh "$prog" "$data/$prog/$prog$n.fct" --dump --trace > "$out/clips-$prog$n.txt"
  python3 bench/tools/summarize.py clips "$prog" "$out/clips-$prog$n.txt" --facts "$facts" > "$out/clips-$prog$n.sum"
  timeout "$limit" "$stoa" run "bench/$prog" --facts "$facts" --json > "$out/stoa-$prog$n.jsonl" 2> "$out/stoa-$prog$n.err"
  rc=$?
  python3 bench/tools/summarize.py stoa "$prog" "$out/stoa-$prog$n.jsonl" --facts "$facts" > "$out/stoa-$prog$n.sum"
  c=$(sed -n 's/^firings //p' "$out/clips-$prog$n.sum")
  s=$(sed -n 's/^firings //p' "$out/stoa-$prog$n.sum")
  if [ "$rc" = 124 ]; then s="timeout(${limit}s)"; fi
  # Results without the per-rule counts.
  if diff -q <(grep -v '^fired\|^firings' "$out/stoa-$prog$n.sum") \
             <(grep -v '^fired\|^firings' "$out/clips-$prog$n.sum") > /dev/null 2>&1; then
    same=same-result
  else
    same=DIFFERENT-result
  fi
  if diff -q <(grep '^fired' "$out/stoa-$prog$n.sum") <(grep '^fired' "$out/clips-$prog$n.sum") > /dev/null 2>&1; then
    rules=same-per-rule
  else
    rules=different-per-rule
  fi
  # The sequence of fired rule names, firing by firing.
  seq=$(python3 - "$out/stoa-$prog$n.jsonl" "$out/clips-$prog$n.txt" <<'PY'
import json, re, sys
s = [json.loads(l)["event"].get("rule") for l in open(sys.argv[1])
     if l.startswith("{") and '"kind":"fired"' in l]
c = [re.match(r"FIRE\s+\d+\s+(\S+):", l).group(1) for l in open(sys.argv[2]) if l.startswith("FIRE")]
d = next((i for i, (a, b) in enumerate(zip(s, c)) if a != b), None)
if d is None and len(s) == len(c):
    print("same-sequence")
else:
    print(f"sequence-differs-at-{(d if d is not None else min(len(s), len(c))) + 1}")
PY
)
  valid=$(grep '^valid' "$out/stoa-$prog$n.sum" | cut -c1-60)
  printf '%-12s clips %6s  stoa %-14s %s %s %s %s\n' "$prog$n" "$c" "$s" "$same" "$rules" "$seq" "$valid"
}

if [ "$what" = manners ] || [ "$what" = all ]; then
  for n in 8 16 32 64 128; do run manners $n; done
fi
if [ "$what" = waltz ] || [ "$what" = all ]; then
  for n in 12 25 37 50; do run waltz $n; done
fi
