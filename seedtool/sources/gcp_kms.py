"""Google Cloud KMS `generateRandomBytes` as an entropy source (extra "gcp").

Cloud KMS draws the bytes from Cloud HSM when asked for protection level HSM, the
only level the method accepts. One call returns 8-1024 bytes (REST reference,
projects.locations.generateRandomBytes `lengthBytes`): longer reads loop, and a
request for fewer than 8 bytes asks for 8 and keeps the first ones. The output is
already conditioned by the HSM: `raw = False`. Every reply is checked against the
length asked for and, when the service sends one, its CRC-32C (`dataCrc32c`), as
Google's reference asks clients to do.

The client is the real google-cloud-kms one over its REST transport, imported only
when this source is used. Credentials are Application Default Credentials; library
callers (and tests against a local endpoint) may pass `credentials=` a
google-auth credentials object, or the string "anonymous".

`available()` does not call Cloud KMS, and avoids google-auth's metadata-server
probe (up to about 3 x 3 s off Google Cloud) unless something says ADC could be
there: GOOGLE_APPLICATION_CREDENTIALS, gcloud's well-known ADC file, a metadata host
override, Google's DMI product name, or a Cloud Run / Functions environment.

This module must never log or put the bytes it receives into an exception. The
generated REST transport logs whole response payloads at DEBUG level, so those
records are dropped while this source's own calls are in flight.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..quiet import Quieter
from ..shared.errors import SourceError, UsageError
from .base import Availability, Source, positive_number

MIN_PER_CALL = 8  # GenerateRandomBytesRequest.length_bytes bounds (REST reference)
MAX_PER_CALL = 1024
DEFAULT_LOCATION = "global"
DEFAULT_TIMEOUT = 10.0  # seconds per HTTP request
DEFAULT_RETRY_DEADLINE = 30.0  # seconds across all retries of one call
SCOPE = "https://www.googleapis.com/auth/cloudkms"

_ADC_FIX = "run gcloud auth application-default login or set GOOGLE_APPLICATION_CREDENTIALS"


_QUIET_LOGGERS = (
    "google.cloud.kms_v1.services.key_management_service.transports.rest",
    "google.cloud.kms_v1.services.key_management_service.client",
)
_no_payload_logging = Quieter(*_QUIET_LOGGERS)


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as `dataCrc32c` uses.

    Table-driven in plain Python so the optional google-crc32c wheel is not needed;
    at most 1 KiB per reply, so speed does not matter.
    """
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _adc_may_exist() -> bool:
    """True when Application Default Credentials could be found without a slow probe."""
    env = os.environ
    if env.get("GOOGLE_APPLICATION_CREDENTIALS"):
        return True
    if any(env.get(v) for v in ("GCE_METADATA_HOST", "GCE_METADATA_IP", "K_SERVICE",
                                "FUNCTION_TARGET")):
        return True
    if os.name == "nt":
        base = Path(env.get("CLOUDSDK_CONFIG") or Path(env.get("APPDATA", "")) / "gcloud")
    else:
        base = Path(env.get("CLOUDSDK_CONFIG") or Path.home() / ".config" / "gcloud")
    if (base / "application_default_credentials.json").is_file():
        return True
    try:
        # What google-auth itself checks on Linux to recognise a Compute Engine VM.
        product = Path("/sys/class/dmi/id/product_name").read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return False
    return product.startswith("Google")


class GcpKmsSource(Source):
    name = "gcp-kms"
    description = "Google Cloud KMS generateRandomBytes at HSM protection level"
    min_entropy = 8.0
    sample_bits = 8
    raw = False
    extra = "gcp"
    known_options = {
        "project": "the Google Cloud project (default the credentials' project)",
        "location": f"the Cloud KMS location id, e.g. us-east1 (default {DEFAULT_LOCATION})",
        "endpoint": "a Cloud KMS API endpoint other than Google's (a test server)",
        "timeout": f"seconds per HTTP request (default {DEFAULT_TIMEOUT:g})",
        "retry_deadline": f"seconds across all retries of one call "
        f"(default {DEFAULT_RETRY_DEADLINE:g})",
        "credentials": "anonymous (for a test endpoint), or a google-auth credentials object "
        "from in-process callers (default Application Default Credentials)",
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.project: str | None = options.get("project") or None
        self.location: str = options.get("location") or DEFAULT_LOCATION
        if "/" in self.location:
            raise UsageError(
                "gcp-kms option location= takes a location id such as us-east1 or global"
            )
        self.endpoint: str | None = options.get("endpoint") or None
        self.timeout = positive_number(self.name, options, "timeout", DEFAULT_TIMEOUT, "seconds")
        self.retry_deadline = positive_number(
            self.name, options, "retry_deadline", DEFAULT_RETRY_DEADLINE, "seconds"
        )
        self._credentials: Any = options.get("credentials") or None
        if isinstance(self._credentials, str) and self._credentials != "anonymous":
            raise UsageError(
                "gcp-kms option credentials= only takes 'anonymous' on the command line; "
                "use Application Default Credentials otherwise"
            )
        self._client: Any = None
        self._retry: Any = None

    @property
    def parent(self) -> str:
        return f"projects/{self.project}/locations/{self.location}"

    # -- setting up -------------------------------------------------------------

    def _import(self) -> Any:
        try:
            from google.cloud import kms_v1
        except ImportError:
            raise SourceError(
                "the gcp-kms source needs google-cloud-kms; pip install 'seedtool[gcp]'"
            ) from None
        return kms_v1

    def _resolve_credentials(self) -> Any:
        creds = self._credentials
        if isinstance(creds, str):  # "anonymous", the only string __init__ lets through
            from google.auth.credentials import AnonymousCredentials

            return AnonymousCredentials()
        if creds is not None:
            return creds
        if not _adc_may_exist():
            raise SourceError(f"no Google Application Default Credentials found; {_ADC_FIX}")
        import google.auth
        from google.auth import exceptions as gax

        try:
            creds, adc_project = google.auth.default(scopes=[SCOPE])
        except gax.DefaultCredentialsError:
            raise SourceError(
                f"no usable Google Application Default Credentials found; {_ADC_FIX}"
            ) from None
        if self.project is None:
            self.project = adc_project or None
        return creds

    def _get_client(self) -> Any:
        if self._client is not None:
            return self._client
        kms_v1 = self._import()
        creds = self._resolve_credentials()
        if self.project is None:
            self.project = os.environ.get("GOOGLE_CLOUD_PROJECT") or None
        if self.project is None:
            raise SourceError(
                "no Google Cloud project is set; pass project= or set GOOGLE_CLOUD_PROJECT"
            )
        client_options = {"api_endpoint": self.endpoint} if self.endpoint else None
        self._client = kms_v1.KeyManagementServiceClient(
            credentials=creds, transport="rest", client_options=client_options
        )
        self._retry = self._make_retry()
        return self._client

    def _make_retry(self) -> Any:
        import requests
        from google.api_core import exceptions as ex
        from google.api_core import retry as retries

        # Transient answers: quota (429), server trouble (5xx), network trouble.
        # Retrying is safe: a failed call spends nothing and a new call gives new bytes.
        transient = retries.if_exception_type(
            ex.TooManyRequests,
            ex.ResourceExhausted,
            ex.InternalServerError,
            ex.BadGateway,
            ex.ServiceUnavailable,
            ex.GatewayTimeout,
            ex.DeadlineExceeded,
            requests.exceptions.ConnectionError,
            requests.exceptions.Timeout,
        )
        kwargs: dict[str, Any] = {
            "predicate": transient,
            "initial": 0.2,
            "maximum": 5.0,
            "multiplier": 2.0,
        }
        try:
            return retries.Retry(timeout=self.retry_deadline, **kwargs)
        except TypeError:  # google-api-core before 2.16 calls it `deadline`
            return retries.Retry(deadline=self.retry_deadline, **kwargs)

    # -- the Source interface ---------------------------------------------------

    def available(self) -> Availability:
        try:
            self._get_client()
        except SourceError as e:
            return Availability.no(str(e))
        except Exception as e:  # noqa: BLE001 - google-auth raises many kinds here
            return Availability.no(str(self._translate(e)))
        detail = {"location": self.parent, "protection_level": "HSM"}
        if self.endpoint:
            detail["endpoint"] = self.endpoint
        return Availability.yes(detail)

    def read(self, n: int) -> bytes:
        if n < 0:
            raise UsageError("cannot read a negative number of bytes")
        if n == 0:
            return b""
        client = self._get_client()
        from google.cloud.kms_v1 import ProtectionLevel

        out = bytearray()
        while len(out) < n:
            need = min(MAX_PER_CALL, n - len(out))
            ask = max(MIN_PER_CALL, need)
            request = {
                "location": self.parent,
                "length_bytes": ask,
                "protection_level": ProtectionLevel.HSM,
            }
            try:
                with _no_payload_logging():
                    reply = client.generate_random_bytes(
                        request=request, retry=self._retry, timeout=self.timeout
                    )
            except Exception as e:  # noqa: BLE001 - mapped to one sentence below
                raise self._translate(e) from None
            data = bytes(reply.data)
            if len(data) != ask:
                raise SourceError(
                    f"Cloud KMS returned {len(data)} bytes where {ask} were asked; "
                    "the reply was discarded, check endpoint= points at Cloud KMS"
                )
            if "data_crc32c" in reply and crc32c(data) != reply.data_crc32c:
                raise SourceError(
                    "Cloud KMS's reply failed its CRC-32C check and was discarded; "
                    "retry, and check endpoint= and any proxy in between"
                )
            out += data[:need]
        return bytes(out)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.transport.close()

    # -- errors -----------------------------------------------------------------

    def _where(self) -> str:
        return self.endpoint or "cloudkms.googleapis.com"

    def _translate(self, e: BaseException) -> SourceError:
        """One actionable sentence for what the client raised (never its text)."""
        import requests
        from google.api_core import exceptions as ex
        from google.auth import exceptions as gax
        from google.protobuf import json_format

        retried = ""
        if isinstance(e, ex.RetryError):
            retried = f" for {self.retry_deadline:g} s of retries"
            if e.cause is None:
                return SourceError(
                    f"Cloud KMS at {self._where()} gave no good answer{retried}; retry later"
                )
            e = e.cause
        if isinstance(e, gax.DefaultCredentialsError):
            return SourceError(f"no usable Google Application Default Credentials; {_ADC_FIX}")
        if isinstance(e, gax.GoogleAuthError):
            return SourceError(
                f"Google credentials could not be refreshed ({type(e).__name__}); {_ADC_FIX}"
            )
        # The REST transport raises the HTTP-named classes (Unauthorized, Forbidden),
        # gRPC the status-named ones; both mean the same here.
        if isinstance(e, (ex.Unauthenticated, ex.Unauthorized)):
            return SourceError(f"Cloud KMS did not accept the credentials (HTTP 401); {_ADC_FIX}")
        if isinstance(e, (ex.PermissionDenied, ex.Forbidden)):
            return SourceError(
                f"Cloud KMS denied generateRandomBytes in {self.parent} (HTTP 403); grant "
                "cloudkms.locations.generateRandomBytes there and make sure the Cloud KMS "
                "API is enabled for the project"
            )
        if isinstance(e, ex.NotFound):
            return SourceError(
                f"Cloud KMS has no {self.parent} (HTTP 404); check project= and location="
            )
        if isinstance(e, (ex.TooManyRequests, ex.ResourceExhausted)):
            return SourceError(
                f"Cloud KMS kept refusing for quota (HTTP 429){retried}; retry later or ask "
                "for a higher Cloud KMS quota"
            )
        if isinstance(e, (ex.ServerError, ex.DeadlineExceeded)):
            code = getattr(e, "code", None)
            return SourceError(
                f"Cloud KMS failed on its side (HTTP {code}){retried}; retry later"
            )
        if isinstance(e, (ex.BadRequest, ex.InvalidArgument)):
            return SourceError(
                f"Cloud KMS rejected the request for {self.parent} (HTTP 400); check that "
                "location= is a Cloud KMS location with Cloud HSM"
            )
        if isinstance(e, ex.GoogleAPICallError):
            code = getattr(e, "code", None)
            return SourceError(
                f"Cloud KMS refused generateRandomBytes (HTTP {code}); "
                "check project=, location= and endpoint="
            )
        if isinstance(e, requests.exceptions.Timeout) and not isinstance(
            e, requests.exceptions.ConnectTimeout
        ):
            return SourceError(
                f"Cloud KMS at {self._where()} did not answer within {self.timeout:g} s"
                f"{retried}; check the network or raise timeout="
            )
        if isinstance(e, requests.exceptions.ConnectionError):
            return SourceError(
                f"could not connect to Cloud KMS at {self._where()}{retried}; "
                "check the network or endpoint="
            )
        if isinstance(e, json_format.ParseError):
            return SourceError(
                f"Cloud KMS at {self._where()} sent a reply that is not a "
                "generateRandomBytes response; check endpoint="
            )
        return SourceError(
            f"Cloud KMS generateRandomBytes failed unexpectedly ({type(e).__name__})"
        )
