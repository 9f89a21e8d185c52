"""The examples run as written: the Python and TypeScript agents (examples/) open a task,
call examples/protected-api (the Rust API behind the tower layer, following the broker live)
and examples/mcp-server (the Python MCP SDK with the Taskpass verifier), and complete."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import BIN, ROOT

API_AUD = "https://tickets.example.com"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.05)


@pytest.fixture
def services(broker, tmp_path):
    grpc = json.loads((broker.data_dir / "broker.json").read_text())["grpc"]
    api_port, mcp_port = free_port(), free_port()
    mcp_url = f"http://127.0.0.1:{mcp_port}/mcp"
    creds = tmp_path / "creds"
    broker.cli("validator", "add", "tickets-api-" + str(api_port), "--audience", API_AUD, "--out", str(creds))
    api = subprocess.Popen([
        str(BIN / "protected-api"), "--broker", grpc, "--issuer", broker.url, "--credentials", str(creds),
        "--name", "tickets-api-" + str(api_port), "--audience", API_AUD, "--listen", f"127.0.0.1:{api_port}",
    ])
    env = {**os.environ, "TASKPASS_ISSUER": broker.url, "TASKPASS_CA": broker.ca, "MCP_PORT": str(mcp_port)}
    mcp = subprocess.Popen([sys.executable, str(ROOT / "examples/mcp-server/server.py")], env=env)
    try:
        wait_for_port(api_port, api, "protected-api")
        wait_for_port(mcp_port, mcp, "the MCP server")
        yield f"http://127.0.0.1:{api_port}", mcp_url
    finally:
        for p in (api, mcp):
            p.terminate()
            p.wait(timeout=10)


def agent_env(broker, tmp_path, services, name: str) -> dict[str, str]:
    api_url, mcp_url = services
    subject = "sub-" + name
    broker.register(name, subject, scopes=("tickets:read",), audiences=(API_AUD, mcp_url))
    token = tmp_path / f"{name}.token"
    token.write_text(broker.attestation(subject))
    return {
        **os.environ,
        "TASKPASS_URL": broker.url,
        "TASKPASS_CA": broker.ca,
        "TASKPASS_TOKEN_FILE": str(token),
        "API_URL": api_url,
        "API_AUDIENCE": API_AUD,
        "MCP_URL": mcp_url,
    }


def check(out: subprocess.CompletedProcess) -> None:
    assert out.returncode == 0, out.stdout + out.stderr
    assert "GET /tickets -> 200" in out.stdout, out.stdout
    assert "MCP lookup_ticket -> ticket 4711" in out.stdout, out.stdout
    assert "task completed" in out.stdout


def test_the_python_agent_example(broker, tmp_path, services):
    env = agent_env(broker, tmp_path, services, "example-py")
    out = subprocess.run([sys.executable, str(ROOT / "examples/python-agent/agent.py")],
                         env=env, capture_output=True, text=True, timeout=60)
    check(out)


def test_the_typescript_agent_example(broker, tmp_path, services):
    example = ROOT / "examples/typescript-agent"
    if not (example / "node_modules").exists() or shutil.which("node") is None:
        if os.environ.get("CI"):
            pytest.fail("tests/run.sh installs examples/typescript-agent's packages")
        pytest.skip("examples/typescript-agent has no node_modules: `npm install` there")
    env = agent_env(broker, tmp_path, services, "example-ts")
    out = subprocess.run(["node", str(example / "agent.mjs")], env=env, capture_output=True, text=True, timeout=60)
    check(out)
