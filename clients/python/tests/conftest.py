"""A real broker for the tests: ``taskpassd`` from the workspace build, trusting a platform
OIDC issuer whose key this conftest holds (its JWKS is a static ``jwks_file``), with agents
registered through the real ``taskpass`` CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(os.environ.get("TASKPASS_BIN_DIR", ROOT / "target" / "debug"))
PLATFORM = "https://platform.test"
API = "https://api.test"
OTHER_API = "https://other.test"


@dataclass
class Broker:
    url: str
    ca: str
    data_dir: Path
    key: ec.EllipticCurvePrivateKey
    proc: subprocess.Popen[bytes]

    def attestation(self, subject: str, ttl: int = 300, audience: str = "taskpass") -> str:
        now = int(time.time())
        return jwt.encode(
            {"iss": PLATFORM, "sub": subject, "aud": audience, "iat": now, "nbf": now - 5,
             "exp": now + ttl, "jti": uuid.uuid4().hex},
            self.key,
            algorithm="ES256",
            headers={"kid": "platform-1"},
        )

    def cli(self, *args: str) -> dict:
        out = subprocess.run(
            [str(BIN / "taskpass"), "--data-dir", str(self.data_dir), "--output", "json", *args],
            check=True,
            capture_output=True,
            text=True,
        )
        return json.loads(out.stdout) if out.stdout.strip() else {}

    def register(self, name: str, subject: str, scopes=("read", "write"), audiences=(API,)) -> None:
        args = ["agent", "register", name, "--owner", "team-py", "--purpose", "pytest",
                "--oidc", f"{PLATFORM}={subject}", "--max-ttl", "600"]
        for a in audiences:
            args += ["--audience", a]
        for s in scopes:
            args += ["--scope", s]
        self.cli(*args)


def _jwk(key: ec.EllipticCurvePrivateKey) -> dict:
    pub = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    return {**pub, "kid": "platform-1", "alg": "ES256", "use": "sig"}


@pytest.fixture(scope="session")
def broker():
    if not (BIN / "taskpassd").exists():
        pytest.fail(f"{BIN}/taskpassd is missing: run `cargo build --workspace --bins` first")
    tmp = Path(tempfile.mkdtemp(prefix="taskpass-py-"))
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp / "platform-jwks.json").write_text(json.dumps({"keys": [_jwk(key)]}))
    data = tmp / "data"
    (tmp / "taskpass.toml").write_text(f"""
[server]
listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
data_dir = "{data}"
trust_domain = "example.org"

[[attestation.oidc]]
issuer = "{PLATFORM}"
audiences = ["taskpass"]
jwks_file = "{tmp / 'platform-jwks.json'}"

[limits]
agent_requests_per_second = 0

[validation]
status_list_ttl_seconds = 1
""")
    proc = subprocess.Popen(
        [str(BIN / "taskpassd"), "--config", str(tmp / "taskpass.toml")],
        env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
    )
    endpoint = data / "broker.json"
    deadline = time.monotonic() + 30
    while not endpoint.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("taskpassd did not start")
        time.sleep(0.05)
    time.sleep(0.05)
    doc = json.loads(endpoint.read_text())
    b = Broker(url=doc["http"], ca=str(data / "ca.pem"), data_dir=data, key=key, proc=proc)
    yield b
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def agent(broker, request):
    """A fresh agent: (name, subject)."""
    name = "py-" + uuid.uuid4().hex[:10]
    subject = "sub-" + name
    broker.register(name, subject)
    return name, subject
