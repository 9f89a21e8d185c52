#!/usr/bin/env bash
# Fuzzing for a bounded time: builds every cargo-fuzz target in fuzz/ once, then runs each for
# SECONDS over its checked-in seed corpus (fuzz/corpus/<target>/). A crash, a hang (one input
# over 10 s) or running out of memory fails the script, naming the target and the saved input.
#
#   bash tests/fuzz.sh [SECONDS]    # seconds per target, default 60
#
# Needs a nightly toolchain beside stable (rustup); installs cargo-fuzz when it is missing.
# New inputs found during a run go to a temporary directory: the checkout stays clean apart
# from fuzz/target, fuzz/artifacts (crash inputs) and fuzz/Cargo.lock, all ignored by git.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 [SECONDS per target]" >&2
  exit 2
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

# The fuzz crate is outside the workspace and has no lock file of its own: start from the
# workspace's, so that it builds the same dependency versions as everything else.
if [[ ! -e fuzz/Cargo.lock ]]; then
  cp Cargo.lock fuzz/Cargo.lock
fi

# Release code with debug assertions and overflow checks. No sanitizer: the project forbids
# unsafe code, and without ASan the build is faster and each run executes more inputs. 16
# codegen units (cargo-fuzz defaults to 1) keep the build short on small CI machines.
target_dir="$PWD/fuzz/target"
host="$(rustc +nightly -vV | sed -n 's/^host: //p')"
build_start=$SECONDS
(cd fuzz && cargo +nightly fuzz build --release --debug-assertions --sanitizer none \
  --codegen-units 16 --target "$host" --target-dir "$target_dir")
build_time=$((SECONDS - build_start))
echo "fuzz: build took ${build_time}s"

mapfile -t targets < <(cd fuzz && cargo +nightly fuzz list)
if [[ ${#targets[@]} -eq 0 ]]; then
  echo "fuzz: no targets found" >&2
  exit 1
fi
bin_dir="$target_dir/$host/release"

# The longest input per target: the raw token targets reach past the 16 KiB token limit;
# the structure-aware ones need a few KiB at most.
declare -A max_len=([access_token]=20000 [attestation_token]=20000 [grpc_requests]=8192)

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=()
run_start=$SECONDS
for t in "${targets[@]}"; do
  corpus="fuzz/corpus/$t"
  if [[ ! -d "$corpus" ]]; then
    echo "fuzz: $t has no seed corpus: add $corpus/" >&2
    failed+=("$t")
    continue
  fi
  mkdir -p "$work/$t" "fuzz/artifacts/$t"
  log="$work/$t.log"
  # New inputs go to the first directory (temporary); the seeds are read from the second.
  if RUST_BACKTRACE=1 "$bin_dir/$t" "$work/$t" "$corpus" \
    -max_total_time="$seconds" -max_len="${max_len[$t]:-4096}" -rss_limit_mb=1024 \
    -timeout=10 -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$t/" >"$log" 2>&1; then
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")"
    cov="$(grep -E '^#[0-9]+.*(DONE|pulse|NEW|REDUCE|INITED)' "$log" | tail -n 1 |
      grep -oE 'cov: [0-9]+ ft: [0-9]+' || true)"
    echo "fuzz: $t ok (${execs:-?} inputs, ${cov:-no coverage line}, $(find "$work/$t" -type f | wc -l) new corpus entries)"
  else
    echo "fuzz: $t FAILED; the end of its log:" >&2
    tail -n 60 "$log" >&2
    artifact="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)"
    echo "fuzz: $t FAILED; input saved at ${artifact:-(no artifact written)}" >&2
    failed+=("$t")
  fi
done
echo "fuzz: ${#targets[@]} targets x ${seconds}s took $((SECONDS - run_start))s (build ${build_time}s)"

if [[ ${#failed[@]} -gt 0 ]]; then
  echo "fuzz: FAILED: ${failed[*]}" >&2
  exit 1
fi
