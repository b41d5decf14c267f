"""AWS KMS `GenerateRandom` as an entropy source (extra "aws").

KMS answers GenerateRandom from its HSMs, or from a CloudHSM cluster when a
CloudHSM key store id is given (`custom_key_store=`). One call returns 1-1024 bytes
(API reference, GenerateRandom `NumberOfBytes`), so longer reads loop. The bytes are
the output of the HSM's DRBG, already conditioned: `raw = False`.

boto3 is imported only when this source is actually used, never at import time, so
commands that do not use KMS neither need nor load it.

`available()` never calls KMS. It resolves the region and walks botocore's standard
credential chain; every step of that chain is local except the EC2 instance metadata
lookup, which botocore bounds by `AWS_METADATA_SERVICE_TIMEOUT` (default 1 s, one
attempt), and which `AWS_EC2_METADATA_DISABLED=true` turns off. Expired session or
SSO tokens are therefore only found by `read()`, which says so in plain words.

This module must never log or put the bytes KMS returns into an exception. botocore
logs whole response bodies at DEBUG level (`botocore.parsers`: "Response body"),
so those records are dropped while this source's own calls are in flight.
"""

from __future__ import annotations

from typing import Any

from ..clouds import aws, read_random
from ..shared.errors import SourceError
from .base import Availability, Source, positive_number, positive_whole_number

MAX_PER_CALL = 1024  # GenerateRandom NumberOfBytes upper bound (KMS API reference)
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 10.0
DEFAULT_MAX_ATTEMPTS = 3  # botocore's "standard" retry mode default: 1 call + 2 retries

WORDS = aws.Words(
    feature="the aws-kms source", profile="profile=", region="region=",
    endpoint="endpoint_url=",
    credentials_fix="run aws configure / aws sso login or set AWS_PROFILE",
    error=SourceError, usage=SourceError,
)
_ACCESS_DENIED = frozenset({"AccessDeniedException", "AccessDenied"})


class AwsKmsSource(Source):
    name = "aws-kms"
    description = "AWS KMS GenerateRandom (KMS HSMs, or a CloudHSM key store)"
    min_entropy = 8.0
    sample_bits = 8
    raw = False
    extra = "aws"
    known_options = {
        "region": "the AWS region (default AWS_REGION or AWS_DEFAULT_REGION)",
        "profile": "the AWS profile whose credentials to use (default AWS_PROFILE or default)",
        "endpoint_url": "a KMS endpoint URL other than the region's (a VPC endpoint, a test)",
        "custom_key_store": "a CloudHSM key store id: GenerateRandom from that cluster",
        "connect_timeout": f"seconds to connect (default {DEFAULT_CONNECT_TIMEOUT:g})",
        "read_timeout": f"seconds to wait for a reply (default {DEFAULT_READ_TIMEOUT:g})",
        "max_attempts": f"calls per request, retries included (default {DEFAULT_MAX_ATTEMPTS})",
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.region: str | None = options.get("region") or None
        self.profile: str | None = options.get("profile") or None
        self.endpoint_url: str | None = options.get("endpoint_url") or None
        self.custom_key_store: str | None = options.get("custom_key_store") or None
        self.connect_timeout = positive_number(
            self.name, options, "connect_timeout", DEFAULT_CONNECT_TIMEOUT, "seconds"
        )
        self.read_timeout = positive_number(
            self.name, options, "read_timeout", DEFAULT_READ_TIMEOUT, "seconds"
        )
        self.max_attempts = positive_whole_number(
            self.name, options, "max_attempts", DEFAULT_MAX_ATTEMPTS
        )
        self._session: Any = None
        self._client: Any = None

    # -- setting up -------------------------------------------------------------

    def _get_session(self) -> Any:
        if self._session is None:
            self._session = aws.session(self.profile, self.region, WORDS)
        return self._session

    def _get_client(self) -> Any:
        if self._client is None:
            session = self._get_session()
            try:
                self._client = aws.client(
                    session, "kms", WORDS, endpoint_url=self.endpoint_url,
                    # total_max_attempts counts the first call; botocore's max_attempts does not
                    retries={"total_max_attempts": self.max_attempts},
                    connect_timeout=self.connect_timeout, read_timeout=self.read_timeout,
                )
            except SourceError:
                raise
            except Exception as e:  # noqa: BLE001 - mapped to one sentence below
                raise self._translate(e) from None
        return self._client

    # -- the Source interface ---------------------------------------------------

    def available(self) -> Availability:
        try:
            creds = aws.credentials(self._get_session(), WORDS, self._call())
        except SourceError as e:
            return Availability.no(str(e))
        detail = {
            "region": str(self._session.region_name),
            "credentials": str(getattr(creds, "method", "unknown")),
        }
        if self.endpoint_url:
            detail["endpoint"] = self.endpoint_url
        if self.custom_key_store:
            detail["custom_key_store"] = self.custom_key_store
        return Availability.yes(detail)

    def read(self, n: int) -> bytes:
        return read_random(n, self._fetch, most=MAX_PER_CALL)

    def _fetch(self, want: int) -> bytes:
        """One GenerateRandom call for exactly `want` bytes, checked."""
        client = self._get_client()
        params: dict[str, Any] = {"NumberOfBytes": want}
        if self.custom_key_store:
            params["CustomKeyStoreId"] = self.custom_key_store
        try:
            with aws.quiet():
                reply = client.generate_random(**params)
        except Exception as e:  # noqa: BLE001 - mapped to one sentence below
            raise self._translate(e) from None
        got = reply.get("Plaintext")
        if not isinstance(got, (bytes, bytearray)) or len(got) != want:
            size = len(got) if isinstance(got, (bytes, bytearray)) else 0
            raise SourceError(
                f"AWS KMS returned {size} bytes where {want} were asked; "
                "the reply was discarded, check endpoint_url= points at AWS KMS"
            )
        return bytes(got)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None and hasattr(client, "close"):
            client.close()

    # -- errors -----------------------------------------------------------------

    def _call(self) -> aws.Call:
        if self._client is not None:
            where = str(self._client.meta.endpoint_url)
        else:
            where = self.endpoint_url or "the AWS KMS endpoint"
        return aws.Call(
            service="AWS KMS", op="GenerateRandom", where=where,
            patience=f"within {self.read_timeout:g} s in {self.max_attempts} attempts",
            retry="retry later, or check the network or raise read_timeout=",
            throttled="retry later, raise max_attempts= or ask AWS for a higher KMS request "
                      "quota",
            refused="check region=, custom_key_store= and endpoint_url=",
        )

    def _translate(self, e: Exception) -> SourceError:
        """One actionable sentence for anything boto3/botocore raised (never its payload)."""
        err = aws.translate(e, WORDS, self._call(), self._explain)
        return err if isinstance(err, SourceError) else SourceError(str(err))

    def _explain(self, info: aws.ClientErrorInfo) -> SourceError | None:
        """KMS's own error codes (API reference, GenerateRandom "Errors")."""
        store = self.custom_key_store
        if info.code in _ACCESS_DENIED:
            return SourceError(
                "AWS KMS denied GenerateRandom (AccessDeniedException); "
                "allow kms:GenerateRandom for this identity in an IAM policy"
            )
        if info.code == "CustomKeyStoreInvalidStateException":
            return SourceError(
                f"the CloudHSM key store '{store}' is not connected; run "
                f"aws kms connect-custom-key-store --custom-key-store-id {store} "
                "and wait until it is CONNECTED"
            )
        if info.code == "CustomKeyStoreNotFoundException":
            return SourceError(
                f"AWS KMS has no custom key store '{store}' in {self._region()}; "
                "check custom_key_store= and region="
            )
        if info.code == "UnsupportedOperationException":
            return SourceError(
                f"AWS KMS cannot GenerateRandom in key store '{store}'; "
                "only CloudHSM key stores support it, so pass a CloudHSM key store id or none"
            )
        return None

    def _region(self) -> str:
        if self._session is not None and self._session.region_name:
            return str(self._session.region_name)
        return self.region or "this region"
