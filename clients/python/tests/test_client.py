"""The agent library against the real broker: tasks as scopes that complete themselves
(recorded as failed when the block raised), token caching and refresh, attestation sources,
httpx auth, errors, and the server-side verifier with the status lists."""

from __future__ import annotations

import asyncio
import json
import os
import time

import httpx
import pytest

import taskpass
from taskpass import client as client_mod

from conftest import API, OTHER_API


def audit(broker, task_id):
    entries = broker.cli("audit", "tail")
    entries = entries.get("entries", entries) if isinstance(entries, dict) else entries
    return [e for e in entries if e.get("task_id") == task_id]


async def test_a_task_completes_on_exit_and_revokes_its_tokens(broker, agent):
    name, subject = agent
    verifier = taskpass.AsyncVerifier(broker.url, API, ca=broker.ca)
    async with taskpass.AsyncClient(
        broker.url, lambda: broker.attestation(subject), ca=broker.ca
    ) as client:
        async with client.task(purpose="summarise", audiences=[API], scopes=["read"]) as task:
            token = await task.token(API)
            assert await task.token(API) == token, "cached"
            claims = await verifier.verify(token)
            assert claims.task_id == task.id
            assert claims.scopes == ("read",)
            assert claims.client_id.endswith("/agent/" + name)
            info = await task.refresh()
            assert info.state == "open"
        assert task.completed
    # Revoked: the status list says so within its ttl (1 s here).
    deadline = time.monotonic() + 5
    while True:
        try:
            await verifier.verify(token)
        except taskpass.InvalidToken as e:
            assert e.reason == "revoked"
            break
        assert time.monotonic() < deadline, "never refused"
        await asyncio.sleep(0.2)
    await verifier.aclose()


async def test_a_block_that_raises_is_recorded_as_failed(broker, agent):
    _, subject = agent
    client = taskpass.AsyncClient(broker.url, lambda: broker.attestation(subject), ca=broker.ca)
    with pytest.raises(KeyError):
        async with client.task(purpose="doomed", audiences=[API], scopes=["read"]) as task:
            await task.token(API)
            raise KeyError("boom")
    assert task.completed
    entries = audit(broker, task.id)
    ends = [e for e in entries if e["action"] == "complete_task"]
    assert ends and ends[0]["reason"] == "agent_failed", entries
    assert 'failure="KeyError"' in ends[0]["detail"]
    # The task is over: a new token is refused.
    with pytest.raises(taskpass.FailedPrecondition):
        await task.token(API, ["write"])
    await client.aclose()


def test_the_sync_client_and_file_attestation_rotate(broker, agent, tmp_path):
    _, subject = agent
    path = tmp_path / "token"
    path.write_text(broker.attestation(subject))
    source = taskpass.FileAttestation(path)
    with taskpass.Client(broker.url, source, ca=broker.ca) as client:
        with client.task(purpose="sync work", audiences=[API], scopes=["read", "write"]) as task:
            t1 = task.token(API)
            # The projected token rotates: the next call reads the new one.
            time.sleep(0.01)
            path.write_text(broker.attestation(subject, ttl=600))
            os.utime(path, None)
            t2 = task.token(API, ["write"])
            assert t1 != t2
            sync_verifier = taskpass.Verifier(broker.url, API, ca=broker.ca)
            assert sync_verifier.verify(t1).task_id == task.id
            assert sync_verifier.verify(t2).scopes == ("write",)
            with pytest.raises(taskpass.InvalidToken):
                sync_verifier.verify(t1[:-2] + "xx")
            # An expired rotation is refused, with the broker's message.
            path.write_text(broker.attestation(subject, ttl=-120))
            with pytest.raises(taskpass.Unauthenticated) as e:
                task.token(OTHER_API)
            assert "attestation" in str(e.value)
            path.write_text(broker.attestation(subject))
            auth = task.httpx_auth(API)
            with httpx.Client() as http:
                ours = next(auth.sync_auth_flow(http.build_request("GET", API + "/tickets")))
                assert ours.headers["authorization"] == "Bearer " + task.token(API)
                # Anywhere else (a discovery, a redirect): no token.
                elsewhere = next(auth.sync_auth_flow(http.build_request("GET", "https://evil.test/")))
                assert "authorization" not in elsewhere.headers
                other_port = next(auth.sync_auth_flow(http.build_request("GET", "https://api.test:8443/")))
                assert "authorization" not in other_port.headers
                # An explicit origin for an API reached elsewhere than its audience.
                via = task.httpx_auth(API, origin="http://127.0.0.1:8080")
                sent = next(via.sync_auth_flow(http.build_request("GET", "http://127.0.0.1:8080/tickets")))
                assert sent.headers["authorization"].startswith("Bearer ")
            with pytest.raises(ValueError):
                task.httpx_auth("tickets-api")


def test_env_attestation_and_errors(broker, agent, monkeypatch):
    _, subject = agent
    monkeypatch.setenv("TP_TOKEN", broker.attestation(subject))
    client = taskpass.Client(broker.url, taskpass.EnvAttestation("TP_TOKEN"), ca=broker.ca)
    with pytest.raises(taskpass.PermissionDenied) as e:
        client.start_task(purpose="x", audiences=[OTHER_API], scopes=["read"])
    assert e.value.code == "PERMISSION_DENIED" and e.value.status == 403
    with pytest.raises(taskpass.PermissionDenied):
        client.start_task(purpose="x", audiences=[API], scopes=["admin"])
    task = client.start_task(purpose="x", audiences=[API], scopes=["read"])
    with pytest.raises(taskpass.PermissionDenied):
        task.token(OTHER_API)
    assert task.complete() == 0
    monkeypatch.setenv("TP_TOKEN", "garbage")
    with pytest.raises(taskpass.Unauthenticated):
        client.start_task(purpose="x", audiences=[API])
    nowhere = taskpass.Client("https://127.0.0.1:9", "x", ca=broker.ca, timeout=2)
    with pytest.raises(taskpass.Unavailable):
        nowhere.start_task(purpose="x", audiences=[API])


async def test_tokens_are_fetched_again_before_they_expire(broker, agent, monkeypatch):
    _, subject = agent
    async with taskpass.AsyncClient(broker.url, lambda: broker.attestation(subject), ca=broker.ca) as client:
        async with client.task(purpose="long", audiences=[API], scopes=["read"]) as task:
            first = await task.token_info(API)
            assert first.fresh()
            # Near the end of its life it is not handed out again.
            later = first.expires_at - client_mod.REFRESH_MARGIN_SECONDS / 2
            assert not first.fresh(now=later)
            # A refresh margin longer than the token's life: it is always near its end.
            monkeypatch.setattr(client_mod, "REFRESH_MARGIN_SECONDS", 10_000.0)
            monkeypatch.setattr(client_mod, "REFRESH_FRACTION", 1.0)
            second = await task.token_info(API)
            assert second.token_id != first.token_id
            # Many callers at once share one fetch.
            monkeypatch.undo()
            results = await asyncio.gather(*(task.token(API, ["read"]) for _ in range(20)))
            assert len(set(results)) == 1


async def test_the_verifier_refuses_what_it_must(broker, agent):
    _, subject = agent
    v = taskpass.AsyncVerifier(broker.url, API, ca=broker.ca)
    other = taskpass.AsyncVerifier(broker.url, OTHER_API, ca=broker.ca)
    wrong_issuer = taskpass.AsyncVerifier("https://elsewhere.test", API, base_url=broker.url, ca=broker.ca)
    async with taskpass.AsyncClient(broker.url, lambda: broker.attestation(subject), ca=broker.ca) as client:
        async with client.task(purpose="v", audiences=[API], scopes=["read"]) as task:
            token = await task.token(API)
            assert (await v.verify(token)).has_scope("read")
            for verifier, token_, reason in [
                (other, token, "wrong_audience"),
                (wrong_issuer, token, "wrong_issuer"),
                (v, token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB"), "bad_signature"),
                (v, "garbage", "malformed"),
                (v, broker.attestation(subject), "malformed"),
                (v, "x" * 20000, "malformed"),
            ]:
                with pytest.raises(taskpass.InvalidToken) as e:
                    await verifier.verify(token_)
                assert e.value.reason == reason, (reason, e.value)
    for x in (v, other, wrong_issuer):
        await x.aclose()


async def test_the_client_certificate_attests(broker, tmp_path):
    name = "py-mtls-" + str(int(time.time() * 1000) % 1_000_000)
    broker.cli("agent", "register", name, "--owner", "team-py", "--purpose", "mtls",
               "--x509", f"spiffe://example.org/agent/{name}", "--audience", API, "--scope", "read")
    broker.cli("agent", "cert", "issue", name, "--out", str(tmp_path))
    cert = (str(tmp_path / f"{name}.pem"), str(tmp_path / f"{name}-key.pem"))
    async with taskpass.AsyncClient(broker.url, None, ca=broker.ca, cert=cert) as client:
        async with client.task(purpose="bound", audiences=[API], scopes=["read"]) as task:
            token = await task.token(API)
    # Bound to the certificate: a verifier that cannot see the holder refuses it.
    v = taskpass.AsyncVerifier(broker.url, API, ca=broker.ca)
    with pytest.raises(taskpass.InvalidToken) as e:
        await v.verify(token)
    assert e.value.reason == "proof_required"
    await v.aclose()
    with pytest.raises(ValueError):
        taskpass.AsyncClient(broker.url, None, ca=broker.ca)


async def test_a_task_waits_for_a_humans_approval(broker, tmp_path):
    """A task asking for an approval scope comes back pending; with ``approval_timeout`` the
    client waits for an approver (here the real CLI, as the built-in approver role) and gets
    the open task, whose tokens carry ``approved_by``; a denied one raises."""
    subject = "py-approvals"
    broker.cli("agent", "register", "py-payer", "--owner", "team-py", "--purpose", "pytest",
               "--oidc", f"https://platform.test={subject}", "--audience", API,
               "--scope", "read", "--scope", "payments:write", "--approval-scope", "payments:write")
    broker.cli("operator", "issue", "py-approver", "--role", "approver", "--out", str(tmp_path))

    def as_approver(*args: str) -> dict:
        return broker.cli("--cert", str(tmp_path / "py-approver.pem"),
                          "--key", str(tmp_path / "py-approver-key.pem"), *args)

    async def answer(approve: bool) -> None:
        for _ in range(100):
            pending = as_approver("approval", "list")
            if pending:
                if approve:
                    as_approver("approval", "approve", pending[0]["approval_id"])
                else:
                    as_approver("approval", "deny", pending[0]["approval_id"], "--reason", "no")
                return
            await asyncio.sleep(0.1)
        raise AssertionError("no approval appeared")

    verifier = taskpass.AsyncVerifier(broker.url, API, ca=broker.ca)
    async with taskpass.AsyncClient(broker.url, lambda: broker.attestation(subject), ca=broker.ca) as client:
        # Without waiting: the task is returned pending, and gets no token.
        pending = await client.start_task(purpose="pay", audiences=[API], scopes=["payments:write"])
        assert pending.info.state == "pending_approval"
        assert pending.info.approval_id.startswith("appr_")
        assert "payments:write" in pending.info.approval_why
        with pytest.raises(taskpass.TaskpassError):
            await pending.token(API)
        as_approver("approval", "deny", pending.info.approval_id, "--reason", "not this one")

        approver = asyncio.create_task(answer(True))
        async with client.task(purpose="pay", audiences=[API], scopes=["payments:write"],
                               approval_timeout=20) as task:
            await approver
            assert task.info.state == "open"
            assert task.info.approved_by.endswith("/operator/approver/py-approver")
            claims = await verifier.verify(await task.token(API))
            assert claims.scopes == ("payments:write",)

        denier = asyncio.create_task(answer(False))
        with pytest.raises(taskpass.FailedPrecondition, match="denied"):
            await client.start_task(purpose="pay", audiences=[API], scopes=["payments:write"],
                                    approval_timeout=20)
        await denier
