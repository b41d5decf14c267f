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

from typing import Any

from ..clouds import gcp, read_random
from ..shared.errors import SourceError, UsageError
from .base import Availability, Source, positive_number

MIN_PER_CALL = 8  # GenerateRandomBytesRequest.length_bytes bounds (REST reference)
MAX_PER_CALL = 1024
DEFAULT_LOCATION = "global"
DEFAULT_TIMEOUT = 10.0  # seconds per HTTP request
DEFAULT_RETRY_DEADLINE = 30.0  # seconds across all retries of one call
SCOPE = "https://www.googleapis.com/auth/cloudkms"

WORDS = gcp.Words(project="project=", endpoint="endpoint=", error=SourceError,
                  refused=SourceError, usage=SourceError)


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

    def _get_client(self) -> Any:
        if self._client is not None:
            return self._client
        kms_v1 = self._import()
        creds, self.project = gcp.credentials(self._credentials, self.project, SCOPE, WORDS)
        if self.project is None:
            raise SourceError(
                "no Google Cloud project is set; pass project= or set GOOGLE_CLOUD_PROJECT"
            )
        self._client = gcp.client(kms_v1.KeyManagementServiceClient, creds, self.endpoint)
        self._retry = gcp.retry(self.retry_deadline)
        return self._client

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
        return read_random(n, self._fetch, most=MAX_PER_CALL, least=MIN_PER_CALL)

    def _fetch(self, ask: int) -> bytes:
        """One generateRandomBytes call for exactly `ask` bytes, checked."""
        client = self._get_client()
        from google.cloud.kms_v1 import ProtectionLevel

        request = {
            "location": self.parent,
            "length_bytes": ask,
            "protection_level": ProtectionLevel.HSM,
        }
        try:
            with gcp.quiet():
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
        return data

    def close(self) -> None:
        client, self._client = self._client, None
        gcp.close([client] if client is not None else [])

    # -- errors -----------------------------------------------------------------

    def _translate(self, e: BaseException) -> SourceError:
        """One actionable sentence for what the client raised (never its text)."""
        call = gcp.Call(
            service="Cloud KMS", what="generate random bytes",
            where=self.endpoint or "cloudkms.googleapis.com", retry="retry later",
            patience=f"within {self.timeout:g} s", deadline=self.retry_deadline,
            throttled="retry later or ask for a higher Cloud KMS quota",
            refused="check project=, location= and endpoint=",
        )
        err = gcp.translate(e, WORDS, call, self._explain)
        return err if isinstance(err, SourceError) else SourceError(str(err))

    def _explain(self, e: BaseException, retried: str) -> SourceError | None:
        """What Cloud KMS's own answers mean (REST reference, generateRandomBytes)."""
        from google.api_core import exceptions as ex
        from google.protobuf import json_format

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
        if isinstance(e, (ex.BadRequest, ex.InvalidArgument)):
            return SourceError(
                f"Cloud KMS rejected the request for {self.parent} (HTTP 400); check that "
                "location= is a Cloud KMS location with Cloud HSM"
            )
        if isinstance(e, json_format.ParseError):
            return SourceError(
                f"Cloud KMS at {self.endpoint or 'cloudkms.googleapis.com'} sent a reply that "
                "is not a generateRandomBytes response; check endpoint="
            )
        return None
