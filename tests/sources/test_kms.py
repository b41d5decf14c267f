"""The aws-kms and gcp-kms sources against local servers only.

aws-kms runs real boto3 against moto's server, and against a small scripted KMS
JSON-protocol server for the faults moto cannot produce (throttling, denial, 5xx,
a hanging reply, short replies). gcp-kms runs the real google-cloud-kms client over
its REST transport against `devtools/fake_gcp_kms.py`. Nothing leaves 127.0.0.1 and no
real credentials are read.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from devtools.fake_gcp_kms import FakeCloudKms, Reply, reply_with
from seedtool.shared.errors import SourceError, UsageError
from seedtool.sources import make_source
from seedtool.sources.aws_kms import AwsKmsSource
from seedtool.sources.gcp_kms import GcpKmsSource, crc32c

if TYPE_CHECKING:
    from devtools.moto_server import MotoServer

pytest_plugins = ["devtools.moto_server"]

REPO = Path(__file__).resolve().parents[2]


def _closed_port() -> int:
    """A 127.0.0.1 port with nothing listening on it (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _all_log_text(records: list[logging.LogRecord]) -> str:
    return "\n".join(f"{r.getMessage()} {vars(r)!r}" for r in records)


# -- both: nothing imported until used ------------------------------------------


def test_cloud_sdks_are_not_imported_until_a_source_is_used() -> None:
    code = (
        "import sys\n"
        "import seedtool.sources\n"
        "import seedtool.sources.aws_kms, seedtool.sources.gcp_kms\n"
        "from seedtool.sources import make_source\n"
        "make_source('aws-kms', region='us-east-1')\n"
        "make_source('gcp-kms', project='p')\n"
        "print('\\n'.join(sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    # -X importtime lists every module imported through the import statement.
    timed = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()]
    assert "seedtool.sources.aws_kms" in timed  # the check itself sees our imports
    assert "seedtool.sources.gcp_kms" in timed
    loaded = proc.stdout.split()
    for names in (timed, loaded):
        heavy = [m for m in names if m.split(".")[0] in ("boto3", "botocore", "google")]
        assert heavy == []


def test_missing_boto3_says_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # makes `import boto3` fail
    avail = AwsKmsSource(region="us-east-1").available()
    assert not avail.ok
    assert "pip install 'seedtool[aws]'" in avail.reason


def test_missing_google_cloud_kms_says_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "google.cloud.kms_v1", None)
    avail = GcpKmsSource(project="p", credentials="anonymous").available()
    assert not avail.ok
    assert "pip install 'seedtool[gcp]'" in avail.reason


def test_unknown_and_bad_options_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="regoin"):
        make_source("aws-kms", regoin="us-east-1")
    with pytest.raises(UsageError, match="read_timeout"):
        make_source("aws-kms", read_timeout="soon")
    with pytest.raises(UsageError, match="max_attempts"):
        make_source("aws-kms", max_attempts="0")
    with pytest.raises(UsageError, match="projet"):
        make_source("gcp-kms", projet="p")
    with pytest.raises(UsageError, match="location"):
        make_source("gcp-kms", location="projects/p/locations/global")


def test_cli_spec_options_reach_the_source() -> None:
    from seedtool.sources import parse_source_spec

    name, opts = parse_source_spec("aws-kms:region=eu-west-1,custom-key-store=cks-1,read-timeout=2")
    src = make_source(name, **opts)
    assert isinstance(src, AwsKmsSource)
    assert (src.region, src.custom_key_store, src.read_timeout) == ("eu-west-1", "cks-1", 2.0)
    assert src.raw is False and src.extra == "aws"


# -- aws-kms against moto -------------------------------------------------------


def _moto_source(moto: MotoServer, **opts: Any) -> AwsKmsSource:
    return AwsKmsSource(region="us-east-1", endpoint_url=moto.endpoint_url, **opts)


@pytest.mark.parametrize("n", [0, 1, 2, 31, 1023, 1024, 1025, 2048, 5000])
def test_aws_exact_lengths_against_moto(
    moto_server: MotoServer, aws_env: dict[str, str], n: int
) -> None:
    # moto refuses NumberOfBytes > 1024, so lengths above it also prove the chunking.
    with _moto_source(moto_server) as src:
        assert len(src.read(n)) == n


def test_aws_reads_differ_and_available_names_the_setup(
    moto_server: MotoServer, aws_env: dict[str, str]
) -> None:
    with _moto_source(moto_server) as src:
        avail = src.available()
        assert avail.ok, avail.reason
        assert avail.detail is not None
        assert avail.detail["region"] == "us-east-1"
        assert avail.detail["credentials"] == "env"
        assert src.read(32) != src.read(32)


def test_aws_no_credentials(
    moto_server: MotoServer, aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    src = _moto_source(moto_server)
    avail = src.available()
    assert not avail.ok
    assert "aws configure / aws sso login or set AWS_PROFILE" in avail.reason
    with pytest.raises(SourceError, match="aws sso login"):
        src.read(8)


def test_aws_no_region(aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    src = AwsKmsSource()
    avail = src.available()
    assert not avail.ok and "AWS_REGION" in avail.reason
    with pytest.raises(SourceError, match="region="):
        src.read(8)


def test_aws_unknown_profile(aws_env: dict[str, str]) -> None:
    avail = AwsKmsSource(profile="nosuchprofile", region="us-east-1").available()
    assert not avail.ok
    assert "nosuchprofile" in avail.reason and "aws configure" in avail.reason


def test_aws_profile_from_config_file(
    moto_server: MotoServer, aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    Path(aws_env["AWS_SHARED_CREDENTIALS_FILE"]).write_text(
        "[seedtest]\naws_access_key_id = testing\naws_secret_access_key = testing\n"
    )
    src = _moto_source(moto_server, profile="seedtest")
    avail = src.available()
    assert avail.ok and avail.detail is not None
    assert avail.detail["credentials"] == "shared-credentials-file"
    assert len(src.read(100)) == 100


def test_aws_response_bodies_never_reach_the_logs(
    moto_server: MotoServer, aws_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with _moto_source(moto_server) as src:
        data = src.read(48)
    assert any(r.name.startswith("botocore") for r in caplog.records)  # DEBUG really was on
    text = _all_log_text(caplog.records)
    assert base64.b64encode(data).decode() not in text
    assert not any(r.name == "botocore.parsers" for r in caplog.records)
    # Outside our calls botocore.parsers logs as usual (the filter is scoped, not global).
    logging.getLogger("botocore.parsers").debug("unrelated record")
    assert caplog.records[-1].getMessage() == "unrelated record"


# -- aws-kms against a scripted KMS server -----------------------------------------


class ScriptedKms:
    """KMS's JSON 1.1 protocol for GenerateRandom, with scripted answers.

    Each queued item answers one request: ("error", HTTP status, "__type"),
    ("raw", HTTP status, body bytes), ("plaintext", bytes) or ("hang",). With the
    queue empty it answers like KMS: `{"Plaintext": base64}` of NumberOfBytes bytes.
    """

    def __init__(self) -> None:
        self.script: deque[tuple[Any, ...]] = deque()
        self.bodies: list[dict[str, Any]] = []
        self.targets: list[str] = []
        self._release = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_POST(self) -> None:  # noqa: N802
                owner._handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        body = json.loads(h.rfile.read(int(h.headers.get("Content-Length") or 0)) or b"{}")
        self.bodies.append(body)
        self.targets.append(str(h.headers.get("X-Amz-Target")))
        item = self.script.popleft() if self.script else ("plaintext", None)
        if item[0] == "hang":
            self._release.wait()
            return
        if item[0] == "error":
            status, out = item[1], json.dumps({"__type": item[2], "message": "scripted"}).encode()
        elif item[0] == "raw":
            status, out = item[1], item[2]
        else:
            data = item[1] if item[1] is not None else os.urandom(body["NumberOfBytes"])
            status, out = 200, json.dumps({"Plaintext": base64.b64encode(data).decode()}).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/x-amz-json-1.1")
        h.send_header("Content-Length", str(len(out)))
        h.end_headers()
        h.wfile.write(out)

    def close(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def kms(aws_env: dict[str, str]) -> Iterator[ScriptedKms]:
    server = ScriptedKms()
    try:
        yield server
    finally:
        server.close()


def _scripted_source(kms: ScriptedKms, **opts: Any) -> AwsKmsSource:
    return AwsKmsSource(region="us-east-1", endpoint_url=kms.url, **opts)


def test_aws_chunks_are_at_most_1024_and_carry_the_key_store(kms: ScriptedKms) -> None:
    with _scripted_source(kms, custom_key_store="cks-1234567890abcdef0") as src:
        assert len(src.read(2500)) == 2500
    assert [b["NumberOfBytes"] for b in kms.bodies] == [1024, 1024, 452]
    assert all(b["CustomKeyStoreId"] == "cks-1234567890abcdef0" for b in kms.bodies)
    assert set(kms.targets) == {"TrentService.GenerateRandom"}


def test_aws_throttling_is_retried_then_succeeds(kms: ScriptedKms) -> None:
    kms.script.extend([("error", 400, "ThrottlingException")] * 2)
    with _scripted_source(kms, max_attempts=3) as src:
        assert len(src.read(16)) == 16
    assert len(kms.bodies) == 3


def test_aws_throttling_after_all_retries(kms: ScriptedKms) -> None:
    kms.script.extend([("error", 400, "ThrottlingException")] * 3)
    with _scripted_source(kms, max_attempts=3) as src, pytest.raises(SourceError) as err:
        src.read(16)
    assert len(kms.bodies) == 3
    msg = str(err.value)
    assert "throttling" in msg and "3 attempts" in msg and "quota" in msg


def test_aws_access_denied_is_not_retried(kms: ScriptedKms) -> None:
    kms.script.append(("error", 400, "AccessDeniedException"))
    with _scripted_source(kms) as src, pytest.raises(SourceError) as err:
        src.read(16)
    assert len(kms.bodies) == 1
    assert "kms:GenerateRandom" in str(err.value)


def test_aws_expired_token(kms: ScriptedKms) -> None:
    kms.script.append(("error", 400, "ExpiredTokenException"))
    with _scripted_source(kms) as src, pytest.raises(SourceError) as err:
        src.read(16)
    assert "ExpiredTokenException" in str(err.value) and "aws sso login" in str(err.value)


def test_aws_server_errors_are_retried(kms: ScriptedKms) -> None:
    kms.script.extend([("raw", 500, b""), ("error", 500, "KMSInternalException")])
    with _scripted_source(kms, max_attempts=3) as src:
        assert len(src.read(16)) == 16
    assert len(kms.bodies) == 3


def test_aws_server_errors_after_all_retries(kms: ScriptedKms) -> None:
    kms.script.extend([("raw", 500, b"")] * 2)
    with _scripted_source(kms, max_attempts=2) as src, pytest.raises(SourceError) as err:
        src.read(16)
    assert len(kms.bodies) == 2
    assert "on its side" in str(err.value) and "2 attempts" in str(err.value)


def test_aws_disconnected_cloudhsm_key_store(kms: ScriptedKms) -> None:
    kms.script.append(("error", 400, "CustomKeyStoreInvalidStateException"))
    with _scripted_source(kms, custom_key_store="cks-0123") as src, pytest.raises(
        SourceError
    ) as err:
        src.read(16)
    msg = str(err.value)
    assert "cks-0123" in msg and "not connected" in msg and "connect-custom-key-store" in msg


@pytest.mark.parametrize(
    "code, words",
    [
        ("CustomKeyStoreNotFoundException", ["no custom key store 'cks-0123'", "us-east-1"]),
        ("UnsupportedOperationException", ["only CloudHSM key stores"]),
        ("ValidationException", ["ValidationException", "custom_key_store="]),
    ],
)
def test_aws_other_refusals_name_the_fix(kms: ScriptedKms, code: str, words: list[str]) -> None:
    kms.script.append(("error", 400, code))
    with _scripted_source(kms, custom_key_store="cks-0123") as src, pytest.raises(
        SourceError
    ) as err:
        src.read(16)
    assert len(kms.bodies) == 1
    for w in words:
        assert w in str(err.value)


def test_aws_hanging_reply_times_out_after_retries(kms: ScriptedKms) -> None:
    kms.script.extend([("hang",)] * 2)
    with _scripted_source(kms, read_timeout="0.3", max_attempts="2") as src, pytest.raises(
        SourceError
    ) as err:
        src.read(16)
    # the server may record the second request after the client gave up on it (a loaded
    # machine schedules its thread late): wait for that event, not for a time
    deadline = time.monotonic() + 30
    while len(kms.bodies) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(kms.bodies) == 2
    assert "did not answer within 0.3 s" in str(err.value)


def test_aws_unreachable_endpoint(aws_env: dict[str, str]) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    src = AwsKmsSource(region="us-east-1", endpoint_url=url, max_attempts=2)
    assert src.available().ok  # available() does not call KMS
    with pytest.raises(SourceError) as err:
        src.read(16)
    assert "could not connect" in str(err.value) and url in str(err.value)


@pytest.mark.parametrize("reply", [b"\x01" * 15, b"\x01" * 17, b""])
def test_aws_reply_of_the_wrong_length_is_rejected(kms: ScriptedKms, reply: bytes) -> None:
    kms.script.append(("plaintext", reply))
    with _scripted_source(kms) as src, pytest.raises(SourceError) as err:
        src.read(16)
    assert f"returned {len(reply)} bytes where 16 were asked" in str(err.value)


# -- gcp-kms against the local Cloud KMS fake ------------------------------------


@pytest.fixture
def gkms() -> Iterator[FakeCloudKms]:
    with FakeCloudKms() as fake:
        yield fake


def _gcp_source(fake: FakeCloudKms, **opts: Any) -> GcpKmsSource:
    from google.auth.credentials import AnonymousCredentials

    opts.setdefault("credentials", AnonymousCredentials())
    opts.setdefault("project", "seed-project")
    return GcpKmsSource(endpoint=fake.endpoint, **opts)


def test_crc32c_known_answer() -> None:
    # The CRC-32C check value from the CRC catalogue ("123456789" -> E3069283).
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 1024, 1025, 1031, 3000])
def test_gcp_exact_lengths(gkms: FakeCloudKms, n: int) -> None:
    with _gcp_source(gkms) as src:
        assert len(src.read(n)) == n
    asked = [r.body["lengthBytes"] for r in gkms.requests]
    assert all(8 <= a <= 1024 for a in asked)  # the fake (like the API) refuses others
    assert sum(min(a, n) for a in asked) >= n
    assert len(asked) == -(-n // 1024)


def test_gcp_request_shape(gkms: FakeCloudKms) -> None:
    with _gcp_source(gkms, location="us-east1") as src:
        avail = src.available()
        assert avail.ok and avail.detail is not None
        assert avail.detail["location"] == "projects/seed-project/locations/us-east1"
        first, second = src.read(20), src.read(20)
    assert first != second
    seen = gkms.requests[0]
    assert seen.path == "/v1/projects/seed-project/locations/us-east1:generateRandomBytes"
    assert seen.body["protectionLevel"] in ("HSM", 2)


def test_gcp_default_location_is_global(gkms: FakeCloudKms) -> None:
    with _gcp_source(gkms) as src:
        src.read(8)
    assert gkms.requests[0].path.endswith("/locations/global:generateRandomBytes")


def test_gcp_429_and_503_are_retried_then_succeed(gkms: FakeCloudKms) -> None:
    gkms.push(Reply(429), Reply(503))
    with _gcp_source(gkms) as src:
        assert len(src.read(32)) == 32
    assert [r.status for r in gkms.requests] == [429, 503, 200]


def test_gcp_quota_exhausted_after_retries(gkms: FakeCloudKms) -> None:
    gkms.push(*[Reply(429)] * 200)
    with _gcp_source(gkms, retry_deadline="1") as src, pytest.raises(SourceError) as err:
        src.read(32)
    assert len(gkms.requests) >= 2
    assert all(r.status == 429 for r in gkms.requests)
    assert "quota" in str(err.value) and "retries" in str(err.value)


def test_gcp_permission_denied_is_not_retried(gkms: FakeCloudKms) -> None:
    gkms.push(Reply(403))
    with _gcp_source(gkms) as src, pytest.raises(SourceError) as err:
        src.read(32)
    assert len(gkms.requests) == 1
    msg = str(err.value)
    assert "cloudkms.locations.generateRandomBytes" in msg and "403" in msg


def test_gcp_unauthenticated(gkms: FakeCloudKms) -> None:
    gkms.token = "a-token-the-client-does-not-have"
    with _gcp_source(gkms) as src, pytest.raises(SourceError) as err:
        src.read(32)
    assert gkms.requests[0].authorization is None  # anonymous credentials send none
    assert "gcloud auth application-default login" in str(err.value)


@pytest.mark.parametrize(
    "reply, why",
    [
        (reply_with(b"\x02" * 31), "returned 31 bytes where 32"),
        (reply_with(b"\x02" * 33), "returned 33 bytes where 32"),
        (reply_with(b"\x02" * 32, crc=12345), "CRC-32C"),
        (Reply(200, b"{}"), "returned 0 bytes"),
        (Reply(200, b"<html>not json</html>"), "not a generateRandomBytes response"),
        (Reply(200, b'{"data": 12}'), "not a generateRandomBytes response"),
    ],
)
def test_gcp_bad_replies_are_rejected(gkms: FakeCloudKms, reply: Reply, why: str) -> None:
    gkms.push(reply)
    with _gcp_source(gkms) as src, pytest.raises(SourceError) as err:
        src.read(32)
    assert why in str(err.value)


def test_gcp_short_reply_to_a_small_request_is_rejected(gkms: FakeCloudKms) -> None:
    # Asking for 4 bytes asks the service for 8; 4 good bytes back are still too few.
    gkms.push(reply_with(b"\x03" * 4))
    with _gcp_source(gkms) as src, pytest.raises(SourceError, match="returned 4 bytes where 8"):
        src.read(4)


def test_gcp_hanging_reply_times_out(gkms: FakeCloudKms) -> None:
    gkms.push(*[Reply(hang=True)] * 20)
    with _gcp_source(gkms, timeout="0.3", retry_deadline="1") as src, pytest.raises(
        SourceError
    ) as err:
        src.read(32)
    assert len(gkms.requests) >= 2  # timeouts are retried
    assert "did not answer within 0.3 s" in str(err.value)


def test_gcp_unreachable_endpoint() -> None:
    from google.auth.credentials import AnonymousCredentials

    url = f"http://127.0.0.1:{_closed_port()}"
    src = GcpKmsSource(
        project="p", endpoint=url, credentials=AnonymousCredentials(), retry_deadline="0.5"
    )
    with pytest.raises(SourceError) as err:
        src.read(8)
    assert "could not connect" in str(err.value) and url in str(err.value)


def test_gcp_payload_logging_is_suppressed_only_during_reads(gkms: FakeCloudKms) -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("google.cloud.kms_v1")
    handler, old_level = Keep(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        with _gcp_source(gkms) as src:
            data = src.read(40)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    messages = [r.getMessage() for r in records]
    assert any(m.startswith("Created client") for m in messages)  # DEBUG was on
    assert not any("Received response" in m for m in messages)
    assert base64.b64encode(data).decode() not in _all_log_text(records)


# -- gcp-kms credentials ---------------------------------------------------------


@pytest.fixture
def no_adc(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for var in (
        "GOOGLE_APPLICATION_CREDENTIALS",
        "GCE_METADATA_HOST",
        "GCE_METADATA_IP",
        "K_SERVICE",
        "FUNCTION_TARGET",
        "GOOGLE_CLOUD_PROJECT",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setenv("HOME", str(tmp_path))
    dmi = Path("/sys/class/dmi/id/product_name")
    if dmi.is_file() and dmi.read_text().startswith("Google"):
        pytest.skip("running on Google Cloud: ADC may really exist here")
    return tmp_path


def test_gcp_without_adc_says_how_to_log_in(no_adc: Path, gkms: FakeCloudKms) -> None:
    src = GcpKmsSource(project="p", endpoint=gkms.endpoint)
    avail = src.available()
    assert not avail.ok
    assert "gcloud auth application-default login" in avail.reason
    assert "GOOGLE_APPLICATION_CREDENTIALS" in avail.reason
    with pytest.raises(SourceError, match="application-default login"):
        src.read(8)
    assert gkms.requests == []


def test_gcp_unreadable_adc_file(
    no_adc: Path, gkms: FakeCloudKms, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = no_adc / "creds.json"
    bad.write_text('{"type": "no-such-type"}')
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(bad))
    avail = GcpKmsSource(project="p", endpoint=gkms.endpoint).available()
    assert not avail.ok and "application-default login" in avail.reason


def test_gcp_adc_service_account_file_end_to_end(
    no_adc: Path, gkms: FakeCloudKms, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real ADC: a service-account key file gives the project and signs the calls."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    email = "seedtool-test@adc-project.iam.gserviceaccount.com"
    info = {
        "type": "service_account",
        "project_id": "adc-project",
        "private_key_id": "k1",
        "private_key": pem,
        "client_email": email,
        "client_id": "1",
        "token_uri": f"{gkms.endpoint}/token",
    }
    path = no_adc / "sa.json"
    path.write_text(json.dumps(info))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))

    with GcpKmsSource(endpoint=gkms.endpoint) as src:
        assert src.available().ok
        assert len(src.read(16)) == 16
    seen = gkms.requests[-1]
    assert seen.path.startswith("/v1/projects/adc-project/locations/global:")
    # The client signs a JWT with the account's key (self-signed JWT access).
    assert seen.authorization is not None and seen.authorization.startswith("Bearer ")
    head, payload, sig = seen.authorization.split(" ", 1)[1].split(".")

    def unb64(s: str) -> bytes:
        return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))

    key.public_key().verify(
        unb64(sig), f"{head}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256()
    )
    assert json.loads(unb64(payload))["iss"] == email
