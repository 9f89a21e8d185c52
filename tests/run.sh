#!/usr/bin/env bash
# The test command: installs what the interop tests need (PyJWT; npm packages in the client
# folders; a venv under target/ for the Python client), builds the binaries the end-to-end
# tests drive, runs every test in the workspace, then the TypeScript and Python clients' tests
# and the examples against the real broker, and validates the Kubernetes manifests.
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

# The TypeScript client (clients/typescript): tsc, then node --test against the same build,
# with oauth4webapi as an independent OAuth client and the official MCP SDK.
(cd clients/typescript && npm ci --no-audit --no-fund --loglevel=error && npm test)
(cd examples/typescript-agent && npm install --no-audit --no-fund --loglevel=error)

# The Python client (clients/python): pytest against the taskpassd just built, with authlib
# as an independent OAuth client and the official MCP SDK; it also runs the examples/ agents
# (Python and TypeScript) against examples/protected-api and examples/mcp-server.
PY=target/pyenv/bin/python
if [ ! -x "$PY" ]; then
  python3 -m venv target/pyenv
fi
"$PY" -m pip install --quiet --disable-pip-version-check -e 'clients/python[test,mcp]'
(cd clients/python && "../../$PY" -m pytest -q -p no:cacheprovider)

# The Kubernetes manifests against the Kubernetes schemas (strict: no unknown fields).
"$PY" -m pip install --quiet --disable-pip-version-check kubernetes-validate
for f in deploy/kubernetes/*.yaml; do
  [ "$(basename "$f")" = kustomization.yaml ] && continue
  target/pyenv/bin/kubernetes-validate --strict --quiet "$f"
done

