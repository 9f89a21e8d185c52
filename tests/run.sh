#!/usr/bin/env bash
# The test command: installs what the interop tests need (PyJWT), builds the binaries the
# end-to-end tests drive, and runs every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -c 'import jwt, cryptography' 2>/dev/null; then
  echo "installing PyJWT + cryptography for the interop tests"
  python3 -m pip install --quiet --disable-pip-version-check 'pyjwt[crypto]>=2.8'
fi

cargo build --workspace --bins --locked
# The validator SDK without its live half (offline verification only) builds on its own.
cargo check -p taskpass-verify --no-default-features --locked
cargo check -p taskpass-verify --no-default-features --features status-list --locked
cargo test --workspace --locked
