#!/usr/bin/env bash
# Compares two builds of the load tool and broker on this machine by alternating them.
#
#   tests/bench-ab.sh ROUNDS DIR_A DIR_B [taskpass bench arguments...]
#
# DIR_A and DIR_B each hold a `taskpass` and a `taskpassd` (copy them out of target/release
# after each build). Each round runs A then B; per-run figures and the medians are printed.
# On a shared VM one run of each says little: the same binary moves by 15% between runs, so
# only a difference that holds in most pairs means something.
set -euo pipefail
rounds=${1:?rounds}
a=${2:?dir A}
b=${3:?dir B}
shift 3
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for i in $(seq "$rounds"); do
  for dir in "$a" "$b"; do
    TASKPASSD_BIN="$dir/taskpassd" "$dir/taskpass" bench --output json "$@" |
      python3 -c 'import json,sys; d=json.load(sys.stdin)["issue_token"]; print(sys.argv[1], d["rate"], d["p50_ms"], d["p99_ms"], d["broker_cpu_us_per_request"], d["client_cpu_us_per_request"])' "$dir" |
      tee -a "$out"
  done
done
python3 - "$out" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
for build in dict.fromkeys(r[0] for r in rows):
    cols = list(zip(*[map(float, r[1:]) for r in rows if r[0] == build]))
    m = [statistics.median(c) for c in cols]
    print(f"{build}: median {m[0]:.0f} tokens/s, p50 {m[1]:.2f} ms, p99 {m[2]:.2f} ms, "
          f"CPU per token broker {m[3]:.1f} us, client {m[4]:.1f} us")
EOF
