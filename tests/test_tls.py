"""TLS: ``agentcom serve --certfile --keyfile`` serves ``wss://`` and ``https://`` only.

A self-signed certificate for 127.0.0.1 is made at test time with the ``openssl``
command; the clients trust exactly that certificate.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import httpx
import pytest
from hubprocess import HubProcess, run_cli_async
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidHandshake, InvalidStatus
from websockets.typing import Origin

from agentcom.client import AgentClient, OperatorClient

EVENT_TIMEOUT_S = 10.0


class Certificate(NamedTuple):
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files."""

    certfile: Path
    keyfile: Path

    def trusting_context(self) -> ssl.SSLContext:
        """A client context that trusts this certificate (and nothing else)."""
        return ssl.create_default_context(cafile=str(self.certfile))


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A fresh self-signed certificate, made with the openssl command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not installed: cannot make a test certificate")
    directory = tmp_path_factory.mktemp("tls")
    certificate = Certificate(directory / "cert.pem", directory / "key.pem")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(certificate.keyfile), "-out", str(certificate.certfile)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return certificate


@pytest.fixture(scope="module")
def tls_hub(
    tmp_path_factory: pytest.TempPathFactory, certificate: Certificate
) -> Iterator[HubProcess]:
    """``agentcom serve`` with the certificate; stopped at the end of the module."""
    flags = ["--certfile", str(certificate.certfile), "--keyfile", str(certificate.keyfile)]
    with HubProcess(tmp_path_factory.mktemp("hub"), serve_args=flags) as hub:
        yield hub


def test_hub_announces_wss_and_https(tls_hub: HubProcess) -> None:
    # then the listening line says wss:// and the dashboard line https://
    assert tls_hub.scheme == "wss"
    assert tls_hub.ws_url.startswith("wss://127.0.0.1:")
    assert tls_hub.stdout is not None
    dashboard = tls_hub.stdout.next_line(EVENT_TIMEOUT_S)
    assert dashboard == f"dashboard: https://127.0.0.1:{tls_hub.port}/dashboard"


async def test_agent_and_operator_run_a_task_over_wss(
    tls_hub: HubProcess, certificate: Certificate
) -> None:
    context = certificate.trusting_context()
    agent = AgentClient(tls_hub.ws_url, "secure-worker", tls_hub.make_token("secure-worker"),
                        capabilities=["tls"], heartbeat_s=None, ssl=context)  # fmt: skip
    operator = OperatorClient(tls_hub.http_url, tls_hub.make_token("ops", "admin"), ssl=context)
    try:
        # given an agent and an operator connected over TLS
        assert (await agent.connect(timeout=EVENT_TIMEOUT_S))["type"] == "identified"
        await operator.connect(timeout=EVENT_TIMEOUT_S)
        assert operator.role == "admin"

        # when the operator submits a task and the agent runs it
        task = await operator.submit("Say hello over TLS", needed_capabilities=["tls"])
        assigned = await agent.receive_type("task_assign", timeout=EVENT_TIMEOUT_S)
        assert assigned["task_id"] == task["task_id"]
        await agent.send({"type": "task_accepted", "task_id": task["task_id"]})
        await agent.receive_type("task_ack", timeout=EVENT_TIMEOUT_S)
        await agent.send({"type": "task_complete", "task_id": task["task_id"],
                          "generation": assigned["generation"],
                          "result": {"status": "success", "output": "hello"}})  # fmt: skip
        ack = await agent.receive_type("task_ack", timeout=EVENT_TIMEOUT_S)

        # then it completes, as over plain WebSocket
        assert ack["status"] == "complete"
        finished = await operator.wait_task(task["task_id"], timeout_s=EVENT_TIMEOUT_S)
        assert finished["status"] == "completed"
        assert finished["result"]["output"] == "hello"
    finally:
        await agent.close()
        await operator.close()


async def test_dashboard_streams_over_wss_to_its_own_https_origin(
    tls_hub: HubProcess, certificate: Certificate
) -> None:
    # given a page served by the hub, opening its dashboard socket
    url = tls_hub.ws_url.removesuffix("/ws") + "/ws/dashboard"
    origin = Origin(tls_hub.http_url)
    async with connect(url, ssl=certificate.trusting_context(), origin=origin) as connection:
        # when it subscribes with a viewer token
        token = tls_hub.make_token("screen", "viewer")
        await connection.send(json.dumps({"type": "subscribe", "token": token}))

        # then it gets the snapshot
        snapshot = json.loads(await connection.recv())
        assert snapshot["type"] == "snapshot"


async def test_health_and_api_over_https(tls_hub: HubProcess, certificate: Certificate) -> None:
    viewer = tls_hub.make_token("reader", "viewer")
    async with httpx.AsyncClient(verify=certificate.trusting_context(),
                                 timeout=EVENT_TIMEOUT_S) as client:  # fmt: skip
        health = await client.get(f"{tls_hub.http_url}/health")
        agents = await client.get(f"{tls_hub.http_url}/api/agents",
                                  headers={"Authorization": f"Bearer {viewer}"})  # fmt: skip

    assert tls_hub.http_url.startswith("https://")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert agents.status_code == 200
    assert isinstance(agents.json(), list)


async def test_plain_connections_to_the_tls_port_fail(
    tls_hub: HubProcess, certificate: Certificate
) -> None:
    plain_ws = f"ws://127.0.0.1:{tls_hub.port}/ws"
    plain_http = f"http://127.0.0.1:{tls_hub.port}/health"

    # when a client speaks plain WebSocket or plain HTTP to the TLS port
    with pytest.raises((InvalidHandshake, OSError, EOFError)):
        async with connect(plain_ws, open_timeout=EVENT_TIMEOUT_S):
            pass
    async with httpx.AsyncClient(timeout=EVENT_TIMEOUT_S) as client:
        with pytest.raises(httpx.TransportError):
            await client.get(plain_http)

    # then nothing is served in clear, and TLS clients still are
    async with httpx.AsyncClient(verify=certificate.trusting_context(),
                                 timeout=EVENT_TIMEOUT_S) as client:  # fmt: skip
        assert (await client.get(f"{tls_hub.http_url}/health")).status_code == 200


async def test_clients_refuse_a_hub_whose_certificate_they_do_not_trust(
    tls_hub: HubProcess,
) -> None:
    # given clients that trust only the system's certificate authorities
    agent = AgentClient(tls_hub.ws_url, "wary", tls_hub.make_token("wary"), heartbeat_s=None)

    # then the handshake fails on the certificate, before any token is sent
    with pytest.raises(ssl.SSLCertVerificationError):
        await agent.connect(timeout=EVENT_TIMEOUT_S)
    async with httpx.AsyncClient(timeout=EVENT_TIMEOUT_S) as client:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.get(f"{tls_hub.http_url}/health")


@pytest.mark.parametrize("trust", ["--cafile", "AGENTCOM_CAFILE"])
async def test_cli_trusts_the_hub_certificate_it_is_given(
    tls_hub: HubProcess, certificate: Certificate, trust: str
) -> None:
    admin = tls_hub.make_token("cli-ops", "admin")
    args = ["task", "submit", "Rotate the logs", "--capability", "nobody", "--json",
            *tls_hub.operator_args(admin)]  # fmt: skip
    if trust == "--cafile":
        trusted = await run_cli_async(*args, "--cafile", str(certificate.certfile))
    else:
        trusted = await run_cli_async(*args, env={"AGENTCOM_CAFILE": str(certificate.certfile)})

    # then the command reaches the hub over https and the task is queued
    assert trusted.returncode == 0, trusted.stderr
    assert json.loads(trusted.stdout)["status"] == "queued"


async def test_cli_refuses_an_untrusted_hub_certificate_in_one_line(
    tls_hub: HubProcess, tmp_path: Path
) -> None:
    admin = tls_hub.make_token("cli-ops", "admin")

    # when the command does not trust the hub's certificate
    untrusted = await run_cli_async("agents", *tls_hub.operator_args(admin))
    # or names a CA file that does not exist
    missing = await run_cli_async("agents", *tls_hub.operator_args(admin),
                                  "--cafile", str(tmp_path / "absent.pem"))  # fmt: skip

    # then each fails with one line saying why
    assert untrusted.returncode != 0
    assert untrusted.stderr.count("\n") == 1
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
    assert missing.returncode != 0
    assert missing.stderr.startswith("agentcom: cannot use the CA file")
    assert missing.stderr.count("\n") == 1


async def test_over_tls_pages_send_hsts_and_allow_only_wss(
    tls_hub: HubProcess, certificate: Certificate
) -> None:
    # when a browser loads the dashboard over https
    async with httpx.AsyncClient(verify=certificate.trusting_context()) as client:
        page = await client.get(f"{tls_hub.http_url}/dashboard")
        health = await client.get(f"{tls_hub.http_url}/health")

    # then it is told to stay on https, and the page may open only wss:// sockets
    for response in (page, health):
        assert response.headers["Strict-Transport-Security"].startswith("max-age=")
    policy = page.headers["Content-Security-Policy"]
    assert f"wss://127.0.0.1:{tls_hub.port}" in policy
    assert "ws://" not in policy
    assert health.json()["insecure"] is False


async def test_connections_in_their_tls_handshake_count_against_the_per_address_limit(
    tmp_path: Path, certificate: Certificate
) -> None:
    flags = ["--certfile", str(certificate.certfile), "--keyfile", str(certificate.keyfile)]
    env = {"AGENTCOM_MAX_CONNECTIONS_PER_ADDRESS": "3", "AGENTCOM_HANDSHAKE_TIMEOUT_S": "60"}
    with HubProcess(tmp_path, serve_args=flags, env=env) as hub:
        context = certificate.trusting_context()
        # given an address holding its 3 connections, none of which has said hello
        silent = [await asyncio.open_connection("127.0.0.1", hub.port) for _ in range(3)]
        try:
            # when it completes a TLS and WebSocket handshake on one more
            with pytest.raises(InvalidStatus) as refused:
                async with connect(hub.ws_url, ssl=context, open_timeout=EVENT_TIMEOUT_S):
                    pass
            # then that one is refused: the unfinished TLS handshakes hold the slots
            assert refused.value.response.status_code == 429
        finally:
            for _, writer in silent:
                writer.close()

        # and once they are gone, the address is served again
        async with asyncio.timeout(EVENT_TIMEOUT_S):
            while True:
                try:
                    async with connect(hub.ws_url, ssl=context, open_timeout=EVENT_TIMEOUT_S):
                        break
                except InvalidStatus as still_full:  # the hub has not seen the closes yet
                    assert still_full.response.status_code == 429
