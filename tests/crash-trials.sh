#!/usr/bin/env bash
# Repeated kill -9 trials against the real broker: ROUNDS trials (default 100) of concurrent
# IssueToken + CompleteTask from three agents, killed at a random moment and restarted, each
# checking that nothing acknowledged was lost. CI runs 5 (the test's default).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins --locked
TASKPASS_CRASH_TRIALS="${1:-100}" cargo test -p taskpass-e2e --locked --test crash_trials -- --nocapture
