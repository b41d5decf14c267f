"""Making seeds: read the chosen sources through their health tests, mix, sign.

`SeedFactory` is the library entry point every delivery path uses (generate,
userdata, nocloud, launch, image seed): one factory per command, one `new()` per VM,
so no two VMs ever share a seed. Sources are opened once per factory.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .health import HealthMonitor, HealthReport
from .keys import public_of
from .shared import envelope
from .shared.errors import HealthTestFailure, SourceError, UsageError
from .shared.mix import mix
from .shared.pubkeys import key_id
from .sources import make_source, source_class
from .sources.base import Source

DEFAULT_TTL = 3600


@dataclass
class SourceState:
    name: str
    source: Source
    required: bool
    monitor: HealthMonitor | None  # None for `os`, which is conditioned by the kernel
    bytes_read: int = 0
    failed: str = ""  # the one-line reason, for the user; never recorded in envelopes
    failed_kind: str = ""  # short and stable, for provenance

    def provenance(self) -> dict[str, Any]:
        rec: dict[str, Any] = {"name": self.name, "bytes": self.bytes_read}
        if self.monitor is not None:
            rep: HealthReport = self.monitor.report
            rec["health"] = rep.verdict if not self.failed else "fail"
            if rep.rct_failures or rep.apt_failures:
                rec["rct_fail"] = rep.rct_failures
                rec["apt_fail"] = rep.apt_failures
        if self.failed_kind:
            rec["error"] = self.failed_kind
        return rec


@dataclass(frozen=True)
class NewSeed:
    raw: bytes  # the signed envelope; contains the seed: treat as secret
    summary: Mapping[str, Any]  # everything but the seed

    @property
    def text(self) -> str:
        return envelope.encode_text(self.raw)

    @property
    def seed_id(self) -> str:
        return str(self.summary["seed_id"])


class SeedFactory:
    """Makes fresh signed envelopes from a set of sources and a signing key."""

    def __init__(
        self,
        private_key: Any,
        sources: Sequence[tuple[str, Mapping[str, Any]]] = (),
        required: Sequence[str] = (),
        nbytes: int = envelope.SEED_DEFAULT,
        ttl: int = DEFAULT_TTL,
    ) -> None:
        if not envelope.SEED_MIN <= nbytes <= envelope.SEED_MAX:
            raise UsageError(
                f"--bytes must be between {envelope.SEED_MIN} and {envelope.SEED_MAX}"
            )
        if not 0 < ttl <= envelope.TTL_MAX:
            raise UsageError(f"--ttl must be between 1 s and {envelope.TTL_MAX // 86400} days")
        self.private_key = private_key
        self.key_id = key_id(public_of(private_key).raw)
        self.nbytes = nbytes
        self.ttl = ttl
        names = [n for n, _ in sources]
        for r in required:
            if r not in names and r != "os":
                names.append(r)
                sources = [*sources, (r, {})]
        self.states: list[SourceState] = [
            SourceState("os", make_source("os"), True, None)
        ]
        for name, opts in sources:
            if name == "os":
                source_class("os").check_options(opts)  # always mixed, once, as above
                continue
            src = make_source(name, **opts)
            mon = HealthMonitor(name, src.min_entropy, src.sample_bits)
            self.states.append(SourceState(name, src, name in required, mon))
        self._checked = False

    def _check_available(self) -> None:
        for st in self.states:
            avail = st.source.available()
            if not avail.ok:
                st.failed, st.failed_kind = avail.reason, "unavailable"
                if st.required:
                    raise SourceError(f"required source '{st.name}' is unavailable: {avail.reason}")
        self._checked = True

    def _read(self, st: SourceState, n: int) -> bytes:
        if st.monitor is None:
            data = st.source.read(n)
        else:
            data = st.monitor.read(st.source.read, n)
        st.bytes_read += n
        return data

    def new(self, now: int | None = None,
            binding: tuple[str, bytes] | None = None) -> NewSeed:
        """A fresh envelope; bound to (instance, nonce) when `binding` is given (version 2,
        for the seed server), else version 1."""
        if not self._checked:
            self._check_available()
        seed_id = os.urandom(envelope.SEED_ID_LEN)
        contributions: list[tuple[str, bytes]] = []
        for st in self.states:
            if st.failed:
                continue
            try:
                contributions.append((st.name, self._read(st, self.nbytes)))
            except SourceError as e:
                st.failed = str(e)
                st.failed_kind = "health" if isinstance(e, HealthTestFailure) else "read"
                if st.required:
                    raise
        provenance = {
            "v": 1,
            "sources": [st.provenance() for st in self.states],
            "mix": "hkdf-sha512",
        }
        seed = mix(contributions, self.nbytes, seed_id)
        raw = envelope.build(
            seed,
            private_key=self.private_key,
            key_id=self.key_id,
            seed_id=seed_id,
            provenance=provenance,
            ttl=self.ttl,
            now=int(time.time()) if now is None else now,
            binding=binding,
        )
        summary = envelope.parse(raw).summary()
        summary["bytes"] = self.nbytes
        return NewSeed(raw, summary)

    def failures(self) -> list[tuple[str, str]]:
        """(source, reason) for every source that contributed nothing, for the CLI to show."""
        return [(st.name, st.failed) for st in self.states if st.failed]

    def close(self) -> None:
        for st in self.states:
            st.source.close()

    def __enter__(self) -> SeedFactory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
