"""The `token` identity check and its tokens, against a real (SQLite) ledger as the store."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from seedtool.identity import IDENTITY_CHECKS, EvidenceInvalid, Identity, Malformed
from seedtool.identity.token import TokenCheck, make_tokens, token_digest
from seedtool.serve.ledger import Ledger, LedgerUnavailable, TooMany, open_ledger

NOW = 1_800_000_000.0


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    ledger = open_ledger(f"sqlite:{tmp_path / 'ledger.db'}")
    yield ledger
    ledger.close()


def test_tokens_are_256_random_bits_with_a_prefix() -> None:
    tokens = make_tokens(50)
    assert len(set(tokens)) == 50
    for token in tokens:
        assert re.fullmatch(r"sdt1_[A-Za-z0-9_-]{43}", token)
    assert token_digest(tokens[0]) == hashlib.sha256(tokens[0].encode()).digest()
    with pytest.raises(ValueError):
        make_tokens(0)


def test_a_stored_token_is_one_instance_boot(ledger: Ledger) -> None:
    token = make_tokens(1)[0]
    digest = token_digest(token)
    ledger.add_tokens([digest], created=NOW, expires=NOW + 3600)
    who = TokenCheck(ledger).verify({"kind": "token", "token": token}, now=NOW + 1)
    assert who == Identity(kind="token", instance="token:" + digest[:8].hex(),
                           boot="token:" + digest[:8].hex(), claims={})
    assert len(who.instance) == len("token:") + 16


def test_a_used_token_gets_k_seeds_in_all_then_is_refused(ledger: Ledger) -> None:
    # a lost response can be retried; a thief's uses count against the same boot
    token = make_tokens(1)[0]
    ledger.add_tokens([token_digest(token)], created=NOW, expires=NOW + 3600)
    check = TokenCheck(ledger)
    numbers = []
    for n in range(3):
        who = check.verify({"kind": "token", "token": token}, now=NOW + n)
        numbers.append(ledger.issue(identity=who, seed_id=f"s{n}", key_id="k",
                                    client="192.0.2.1", now=NOW + n, limit=3))
    assert numbers == [1, 2, 3]
    assert ledger.token_state(token_digest(token), NOW + 4) == "used"
    who = check.verify({"kind": "token", "token": token}, now=NOW + 4)
    with pytest.raises(TooMany):
        ledger.issue(identity=who, seed_id="s4", key_id="k", client="203.0.113.5",
                     now=NOW + 4, limit=3)


def test_unknown_and_expired_tokens_are_refused_without_echoing_them(ledger: Ledger) -> None:
    known, unknown = make_tokens(2)
    ledger.add_tokens([token_digest(known)], created=NOW, expires=NOW + 60)
    check = TokenCheck(ledger)
    for token, now in ((unknown, NOW), (known, NOW + 60), (known, NOW + 1e6)):
        with pytest.raises(EvidenceInvalid) as caught:
            check.verify({"kind": "token", "token": token}, now=now)
        assert caught.value.status == 401 and caught.value.error == "evidence-invalid"
        message = str(caught.value)
        assert token not in message and token[5:20] not in message and "\n" not in message


@pytest.mark.parametrize("evidence", [
    {"kind": "token"},
    {"kind": "token", "token": 7},
    {"kind": "token", "token": ""},
    {"kind": "token", "token": "sdt2_" + "A" * 43},
    {"kind": "token", "token": "sdt1_" + "A" * 42},
    {"kind": "token", "token": "sdt1_" + "A" * 42 + "="},
    {"kind": "token", "token": "sdt1_" + "A" * 500},
])
def test_malformed_evidence(ledger: Ledger, evidence: dict[str, object]) -> None:
    with pytest.raises(Malformed) as caught:
        TokenCheck(ledger).verify(evidence, now=NOW)
    assert caught.value.status == 400
    token = evidence.get("token")
    if isinstance(token, str) and token:
        assert token not in str(caught.value)


def test_only_digests_are_stored(tmp_path: Path) -> None:
    ledger = open_ledger(f"sqlite:{tmp_path / 'ledger.db'}")
    tokens = make_tokens(20)
    ledger.add_tokens([token_digest(t) for t in tokens], created=NOW, expires=NOW + 60)
    ledger.close()
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert token_digest(tokens[0]) in stored  # the search would find what is there
    for token in tokens:
        assert token.encode() not in stored and token[5:].encode() not in stored


def test_a_store_that_fails_is_a_ledger_error_not_a_verdict(tmp_path: Path) -> None:
    ledger = open_ledger(f"sqlite:{tmp_path / 'ledger.db'}")
    token = make_tokens(1)[0]
    ledger.add_tokens([token_digest(token)], created=NOW, expires=NOW + 60)
    ledger.close()
    with pytest.raises(LedgerUnavailable) as caught:
        TokenCheck(ledger).verify({"kind": "token", "token": token}, now=NOW)
    assert caught.value.status == 503


def test_the_registry_names_the_check() -> None:
    assert IDENTITY_CHECKS.load("token") is TokenCheck
    assert TokenCheck.kind == "token"
