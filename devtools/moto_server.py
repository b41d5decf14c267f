"""pytest fixtures: a real moto server on 127.0.0.1 and an AWS environment with no real credentials.

Use from a test module with `pytest_plugins = ["devtools.moto_server"]`, then ask for
`moto_server` (one server per test session; its state is reset before each test that
asks for it) and `aws_env` (fake credentials, a region, and no access to the caller's
~/.aws files or the EC2 instance metadata service). Clients point at the server with
`endpoint_url=moto_server.endpoint_url`.

Any AWS service moto implements can be used through the one server: moto's
dispatcher picks the service from each request's signing scope.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

FAKE_REGION = "us-east-1"


@dataclass(frozen=True)
class MotoServer:
    endpoint_url: str

    def reset(self) -> None:
        """Forget every resource created so far (moto's documented reset endpoint)."""
        req = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - 127.0.0.1 only
            resp.read()


@pytest.fixture(scope="session")
def _moto_server_session() -> Iterator[MotoServer]:
    moto_server_mod = pytest.importorskip("moto.server")
    server: Any = moto_server_mod.ThreadedMotoServer(
        ip_address="127.0.0.1", port=0, verbose=False
    )
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield MotoServer(f"http://{host}:{port}")
    finally:
        server.stop()
        # ThreadedMotoServer.stop() shuts the loop down but leaves the socket open.
        inner = getattr(server, "_server", None)
        if inner is not None:
            inner.server_close()


@pytest.fixture
def moto_server(_moto_server_session: MotoServer) -> MotoServer:
    _moto_server_session.reset()
    return _moto_server_session


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """Fake static credentials and a region; nothing read from the real user's setup."""
    for var in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_KMS",
    ):
        monkeypatch.delenv(var, raising=False)
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": FAKE_REGION,
        "AWS_REGION": FAKE_REGION,
        "AWS_CONFIG_FILE": str(tmp_path / "aws-config-absent"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-credentials-absent"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env
