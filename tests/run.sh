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
cargo test --workspace --locked
