"""Tests for the Simtec Entropy Key source: Skein v1.1, the protocol, the transports.

Known answers come from outside this repository: the Skein team's golden KAT file
for Skein v1.1 (`skein_golden_kat.txt`, as shipped in PySkein 0.4, the last PySkein
with the v1.1 rotation constants; PySkein 0.5's NEWS: "Updated rotation constants
to new Skein specification (version 1.2)"), the Skein-256-256 IV in ekeyd 1.1.5's
`device/skein/skein_iv.h`, and the example frames of ekeyd 1.1.5's
`doc/README.protocol` (Debian package ekeyd), which the device MAC'd under the
all-zero session key of the key with serial NwBvBlg3OTBJORFD.

The device side is `devtools.ekey_sim`; the real `ekeyd` daemon is run against it to
show the simulator, and therefore our decoder, speaks the real protocol.
"""

from __future__ import annotations

import base64
import os
import select
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.ekey_sim import EntropyKeySim, PtySimulator
from seedtool.shared.errors import DeviceError, TamperedFrame, UsageError
from seedtool.sources import make_source
from seedtool.sources.entropykey import EntropyKeySource
from seedtool.sources.entropykey_protocol import (
    PERS_PMS,
    Deframer,
    HostSession,
    KeyringError,
    SessionKeys,
    WrongLongTermKey,
    build_frame,
    decode_subcode,
    encode_subcode,
    format_keyring_line,
    parse_keyring,
    pem_decode,
    prepare,
    rekey_command,
)
from seedtool.sources.skein import Skein256, skein256

KAT_MESSAGE = bytes.fromhex(
    "d3090c72167517f7c7ad82a70c2fd3f6443f608301591e598eadb195e8357135ba26fede2ee187417f816048"
    "d00fc23512737a2113709a77e4170c49a94b7fdff45ff579a72287743102e7766c35ca5abc5dfe2f63a1e726"
    "ce5fbd2926db03a2dd18b03fc1508a9aac45eb362440203a323e09edee6324ee2e37b4432c1867ed696e6c9d"
    "b1e6abea026288954a9c2d5758d7c5db7c9e48aa3d21cae3d977a7c3926066aa393dbd538dd0c30da8916c87"
    "57f24c18488014668a2627163a37b261833dc2f8c3c56b1b2e0be21fd3fbdb507b2950b77a6cc02efb393e57"
    "419383a920767bca2c972107aa61384542d47cbfb82cfe5c415389d1b0a2d74e2c5da851"
)
KAT_MAC_KEY = bytes.fromhex(
    "cb41f1706cde09651203c2d0efbaddf847a0d315cb2e53ff8bac41da0002672e920244c66e02d5f0dad3e94c"
    "42bb65f0d14157decf4105ef5609d5b0984457c193"
)
GOLDEN_KAT_V1_1 = [
    ("inc", 0, 256, 0, "bc2763f707e262b80e0313791543a7ab0a4b6cd083270afb2fce4272e1bb0aa9"),
    ("inc", 1, 256, 0, "a47be71a185ba0af820b3ce845a3d35a80ec64f96a0d6a36e3f5363624d8a091"),
    ("inc", 4, 256, 0, "a61e6021bfe247d75aa6c902702175cfd4de05b492aa2d399dac3f66b02ea93b"),
    ("inc", 8, 256, 0, "9715517cafac810bc74a0fca379edb1195efb0ed50e88953acd1390f508b94ab"),
    ("inc", 16, 256, 0, "3460d80f1be543d07f2e75c25be2733ccd75f566b198f02fddc91ce4f2d48bd2"),
    ("inc", 24, 256, 0, "a6b21817ba50c8e6755b248d76aa310fb86aae693557799a795a54911284fdc0"),
    ("inc", 32, 256, 0, "cc2da82f3973c2f7a8ced0bbb54aa028ecaf6b5911628d0ffabb2008e411d171"),
    ("inc", 48, 256, 0, "af112fae4aa840e27e62818d06610475d9568a8434595d49d62f8647aa6c1927"),
    ("inc", 64, 256, 0, "fa1a762b6b1c72b70d52926353e10eb8fb0edd7313da20a2413180b8e289b872"),
    ("inc", 96, 256, 0, "307095df4a0df792e1ab686ff65c16e1f62bb36041de88ec26d4835f36047f4f"),
    ("inc", 128, 256, 0, "d50e55eb01b8b5b64aaeba673c276a0d4981607ddb209b83a5e0e261cc983034"),
    ("inc", 256, 256, 0, "12a3245f2ef88799b9e204802165dc75ff365be4f864fe1dac0d47b6f25bd546"),
    ("mac", 0, 256, 16, "29cf949afd58d86963944229af4d335095e55537b8a1f4a0222e9d4f2dbcd0a7"),
    ("mac", 1, 256, 65, "e4de5c84c1341bd485f73b780a3a9139c964e4761c7bbca4dcc7500fd6e2d8af"),
    ("mac", 4, 256, 32, "08c92875875cb899f42011ae315ca4e954defdc3acadff9f6b92b90c74f160a4"),
    ("mac", 8, 256, 33, "a33b833c86ea22f60e46593cff3d42be7978e220a4785621df024d324259e050"),
    ("mac", 16, 256, 65, "bb80e0d8ec4862f0f2e3348308de85cb2b4d5eaccfadab8461d5392948fdeb5b"),
    ("mac", 24, 256, 0, "f40644168b15c8adb744f6130bc4f476d143bb88dbbb91bd4374aaab0ba89f27"),
    ("mac", 32, 256, 32, "3458b55e0492494a1fb2ad0f4c8b2edb39fa483cfd8f59e7e06f603d3901278c"),
    ("mac", 48, 256, 65, "dd6202499a28c0cdc85ba585d8a7029e1a8ef57b787a6cc2909004c04fe46279"),
    ("mac", 64, 256, 16, "f6b7479e34cca237091e366f299013e3882afe0bee2ae5b16d1bc9fc406dc32e"),
    ("mac", 96, 256, 33, "f1e13befd4cf4ffb7b9f12d1e13890157790b914aea6d12497ef05e02ecc918e"),
    ("mac", 128, 160, 0, "fc45344b5dca5cc48e9eb1801bb943a984f50bd1"),
    ("mac", 128, 224, 16, "06852d5b7bb2ae8add0e035cc8a22dd50a32e9c8609ca995ef26bae3"),
    ("mac", 128, 256, 32, "b5118df7f3705a55df4726a9ec681598e7c9334705ec1e5506593e0e4f9f739f"),
    (
        "mac",
        128,
        384,
        33,
        "62532f0352da988790e949571e0605c4c5224d7ca5b669f24363b612ba02899b"
        "004b40a5e02733d33797b60103f82767"
    ),
    (
        "mac",
        128,
        512,
        65,
        "962338463f2c88276bb3f214da4a3b649e05101eaa2647f41835168f01f0c811"
        "79e31c295ccc18d0510979b5cc8f849fafdba7885fdc51f96772c1ff9049d646"
    ),
    (
        "mac",
        128,
        1024,
        0,
        "486f132bedacd5826ea460bf56936bb8625aaa201f6110bd224d8da17ce7b896"
        "9e4a25901ff44a86e2003d6874535ff1467a0005b3f6319866969b198a70780b"
        "5fe2e6d5501f00dd94c5ff85ba34ab54eddc951dffd45af4e35558146c40912c"
        "deee520169b086c861a6464588f2401604b8e88ffd1d2e972aaa2e2bed0b6edf"
    ),
    (
        "mac",
        128,
        264,
        16,
        "6ac78309a74989824eb294d89283dbf07f56f2469a5278fbb4021c810c0175e6"
        "7f"
    ),
    (
        "mac",
        128,
        520,
        32,
        "81916a5594bc471307e38295e5b44ffab4e3c605dcc1052f04efd46b8a4c680b"
        "9a1276ad45bbb3e659ce018d813af9eb6e9e58af4d509eff8387fd85fb4175e7"
        "3e"
    ),
    (
        "mac",
        128,
        1032,
        33,
        "49ece4fbe8714e16279dbbf0f3183d413ec88c2bad407b0c36e57b76a0585832"
        "6d2f3ffc05f7df49ab264587f20db7d0449d38fa0f148e5e1862f55c3a20678c"
        "a81419075b87799df2ba3a9234e02e1ec77544db251073c63436f5eeb2d552ca"
        "a9dfc07259df46fe243783b7c79505763f5884c8d7bf53099d39606d079cc557"
        "cd"
    ),
    (
        "mac",
        128,
        2056,
        65,
        "d43e3fe1d4b901f227c619d28df99322a71eb254be4914ce0d515ce5f19e3928"
        "4fa37e8a736aa00c8d36881fc2cf19871a0742212756a1f412e6ecb79e4e9684"
        "6e20775d12d052e35399044c3eb15a9bfefaf1ea2284762b610f8a2b6418d3fe"
        "39406005e357af8c5dba9fcbe925684cf27198f795bbe58b8a054b9f035897a6"
        "8770df6b6e65dc17d2e151f067ea7c665de916316e5c9e6cf865a3ce9f651280"
        "6f7ca20a3e9b8fe483c4b7d9c3cf7a437fabc2ab381f5f90de1eb06d7a8c8540"
        "31fd3149915c2fac26b409deb3018027d9684904b52eb06b660ee5054e293ab2"
        "f72d24fda6d0ca8b6efae75a9e17a0def49eda0f68f7b495c748333ae3081f0c"
        "20"
    ),
    ("mac", 256, 256, 32, "a14aab45480e307ea608926202707f8e3df6df1f919e428deacf224fa6201f61"),
]

#: Skein-256-256 IV (chaining value after the config block), ekeyd skein_iv.h
SKEIN_256_IV_256 = (
    0x388512680E660046,
    0x4B72D5DEC5A8FF01,
    0x281A9298CA5EB3A5,
    0x54CA5249F46070C4,
)

README_SERIAL = "NwBvBlg3OTBJORFD"
#: (content: the 52 characters after "* ", MAC) from README.protocol; all were MAC'd
#: under the all-zero session key (the K! frame is sent under the key it replaces)
README_FRAMES = [
    ("S!AANwBvBlg3OTBJORFD", "Al/Smw1b"),
    ("I>T03143 V03254", "apKTNVoy"),
    ("k>Unable to send entropy. Please re-key session.", "VqrrSb4k"),
    ("I>T03150 V03254", "6ihYwAqo"),
    ("I>F07342:00000:00000:00000:00000", "1L9eG/G8"),
    ("I>S08052:23751:23792:23584:07112:20876:08063:24150:0", "Sr3rR9o3"),
    ("K!AA6XxLwelzehWDH8ofVA7moL76KiQj0ruKmqs9T7ygW/Q=", "Qkbxfpr4"),
    ("M>Long-term rekey unlocked", "vrHSYIoF"),
    ("l>Long-term rekey locked-out", "m/wvdw2F"),
    ("l>Nonce MAC does not match", "6l+FxwYn"),
    ("W>Unknown Input Character 0x65", "TRNC7UwS"),
]
#: README's entropy frame was MAC'd under a session key we do not know
README_ENTROPY_FRAME = ("E!UYIYK1Z/uc21bcnUi9QF37X+rgByqWP+RJdvcaSBWNBhY=", "OIq9Dvd3")


def readme_frame(content: str, mac: str) -> bytes:
    return b"* " + content.encode().ljust(52) + mac.encode() + b"\r\n"


# --------------------------------------------------------------------------- Skein v1.1


def _kat_message(kind: str, n: int) -> bytes:
    if kind == "inc":  # the KAT's 'incrementing' data counts down from FF
        return bytes((0xFF - i) & 0xFF for i in range(n))
    return KAT_MESSAGE[:n]


@pytest.mark.parametrize("kind,msg_len,hash_bits,key_len,expected", GOLDEN_KAT_V1_1)
def test_skein256_v1_1_golden_kat(
    kind: str, msg_len: int, hash_bits: int, key_len: int, expected: str
) -> None:
    msg = _kat_message(kind, msg_len)
    assert skein256(msg, hash_bits, KAT_MAC_KEY[:key_len]).hex() == expected


def test_skein256_iv_matches_the_reference_table() -> None:
    assert Skein256(256).chaining_words == SKEIN_256_IV_256


def test_skein256_incremental_updates_match_one_shot() -> None:
    msg = KAT_MESSAGE[:200]
    whole = skein256(msg, 256, KAT_MAC_KEY[:32])
    for cut in (0, 1, 31, 32, 33, 64, 65, 199):
        ctx = Skein256(256, KAT_MAC_KEY[:32])
        ctx.update(msg[:cut])
        ctx.update(msg[cut:])
        assert ctx.final() == whole


def test_copy_is_independent() -> None:
    a = Skein256()
    a.update(b"abc")
    b = a.copy()
    b.update(b"def")
    assert a.final() == skein256(b"abc")
    assert b.final() == skein256(b"abcdef")


# --------------------------------------------------------------------------- README known answers


@pytest.mark.parametrize("content,mac", README_FRAMES)
def test_readme_frames_verify_under_the_zero_session_key(content: str, mac: str) -> None:
    serial = base64.b64decode(README_SERIAL)
    keys = SessionKeys(serial, bytes(32))
    assert keys.mac(content.encode().ljust(52)) == mac.encode()
    assert keys.verify(readme_frame(content, mac))


def test_readme_entropy_frame_does_not_verify_under_the_zero_key() -> None:
    keys = SessionKeys(base64.b64decode(README_SERIAL), bytes(32))
    assert not keys.verify(readme_frame(*README_ENTROPY_FRAME))


def test_serial_frame_mac_needs_the_right_serial() -> None:
    other = base64.b64decode("NwBvBlg3OTBJORFE")
    assert not SessionKeys(other, bytes(32)).verify(readme_frame(*README_FRAMES[0]))


def test_personalisation_drops_its_last_32_bytes() -> None:
    """ekeyd's set-up only ever feeds the first 64 of the 96 characters: the reference
    Skein update() holds back its last block (see entropykey_protocol's docstring)."""
    serial, secret = bytes(range(12)), bytes(32)
    changed_tail = PERS_PMS[:64] + b"x" * 32
    changed_head = b"x" + PERS_PMS[1:]
    base = prepare(serial, secret, PERS_PMS)
    tail = prepare(serial, secret, changed_tail)
    head = prepare(serial, secret, changed_head)
    for ctx in (base, tail, head):
        ctx.update(b"frame content")
    a, b, c = base.final_pad(), tail.final_pad(), head.final_pad()
    assert a == b
    assert a != c


def test_subcodes_are_low_six_bits_first() -> None:
    assert decode_subcode(b"AA") == 0
    assert decode_subcode(b"UY") == 20 + (24 << 6)  # README's entropy frame, sequence 1556
    for v in (0, 1, 63, 64, 1556, 4095):
        assert decode_subcode(encode_subcode(v)) == v


def test_rekey_command_is_k_base64_dot() -> None:
    nonce = bytes(range(12))
    cmd = rekey_command(nonce)
    assert cmd[:1] == b"K" and cmd[-1:] == b"." and pem_decode(cmd[1:-1]) == nonce


# --------------------------------------------------------------------------- keyring


def test_parse_keyring_in_ekey_setkey_format() -> None:
    s1, k1 = bytes(range(12)), bytes(range(32))
    s2, k2 = bytes(12), b"\xff" * 32
    text = (
        b"# Do not edit this directly, this file is managed by ekey-setkey\n"
        + format_keyring_line(s1, k1)
        + b"\n   garbage line\n"
        + format_keyring_line(s2, k2)
    )
    assert parse_keyring(text) == {s1: k1, s2: k2}


def test_parse_keyring_rejects_wrong_lengths() -> None:
    bad = base64.b64encode(bytes(12)) + b" " + base64.b64encode(bytes(31)) + b"AA==\n"
    with pytest.raises(KeyringError, match="line 1"):
        parse_keyring(bad)


# --------------------------------------------------------------------------- host session


SERIAL = base64.b64decode("SeedToolTest0001")
LTK = bytes.fromhex("8f" * 16 + "3c" * 16)


def keyed_pair(
    max_rejected: int = 8, keyring: dict[bytes, bytes] | None = None, **sim_kw: object
) -> tuple[EntropyKeySim, HostSession]:
    """A simulator and a host session that have completed the handshake."""
    sim = EntropyKeySim(SERIAL, LTK, **sim_kw)  # type: ignore[arg-type]
    host = HostSession(
        keyring if keyring is not None else {SERIAL: LTK}, os.urandom, max_rejected=max_rejected
    )
    host.start()
    pump(sim, host, 3)  # S, k, K!
    assert host.keyed
    return sim, host


def pump(sim: EntropyKeySim, host: HostSession, frames: int) -> None:
    for _ in range(frames):
        sim.host_write(host.take_writes())
        host.receive(sim.next_frame())


def test_handshake_follows_the_protocol() -> None:
    sim = EntropyKeySim(SERIAL, LTK)
    host = HostSession({SERIAL: LTK}, os.urandom)
    host.start()
    assert host.take_writes() == b"\x03"
    host.receive(sim.next_frame())  # S under the zero key
    assert host.serial == SERIAL and not host.keyed
    host.receive(sim.next_frame())  # k: "re-key me"
    cmd = host.take_writes()
    assert cmd[:1] == b"K" and cmd[-1:] == b"."
    sim.host_write(cmd)
    assert sim.nonces == [pem_decode(cmd[1:-1])]
    host.receive(sim.next_frame())  # K!
    assert host.keyed and host.stats.rekeys == 1


def test_simulator_frames_decode_to_the_simulators_entropy() -> None:
    sim, host = keyed_pair(info_every=7)
    pump(sim, host, 200)
    assert host.stats.entropy_frames == len(sim.sent_entropy) > 150
    assert host.take_entropy(host.available) == b"".join(sim.sent_entropy)
    assert host.stats.frames_rejected == 0
    assert host.stats.info["failure_mode"] == "0"


def test_sequence_exhaustion_leads_to_a_rekey_and_entropy_keeps_flowing() -> None:
    sim, host = keyed_pair()
    pump(sim, host, 4096 + 40)
    assert host.stats.rekeys == 2
    assert len(sim.nonces) == 2 and sim.nonces[0] != sim.nonces[1]
    assert host.take_entropy(host.available) == b"".join(sim.sent_entropy)


def test_every_single_bit_flip_of_an_entropy_frame_is_rejected_and_counted() -> None:
    sim, host = keyed_pair(max_rejected=10**6)
    flips = 0
    for bit in range(64 * 8):
        frame = bytearray(sim.next_frame())
        assert frame[2:3] == b"E"
        frame[bit // 8] ^= 1 << (bit % 8)
        good = sim.next_frame()
        before = host.stats.frames_rejected + host.stats.framing_errors
        host.take_entropy(host.available)
        host.receive(bytes(frame) + good)
        # the flipped frame contributes nothing; the good one after it still arrives
        assert host.take_entropy(host.available) == sim.sent_entropy[-1], bit
        assert host.stats.frames_rejected + host.stats.framing_errors == before + 1, bit
        flips += 1
    assert flips == 512


def test_entropy_under_the_old_key_still_counts_while_a_rekey_is_pending() -> None:
    sim, host = keyed_pair()
    request = build_frame(sim._keys, b"k", b">", b"Unable to send entropy. Please re-key session.")
    host.receive(request)
    command = host.take_writes()
    assert command[:1] == b"K"
    host.receive(sim.next_frame())  # still under the old session key
    assert host.take_entropy(host.available) == sim.sent_entropy[-1]
    sim.host_write(command)
    pump(sim, host, 3)  # K!, then entropy under the new key
    assert host.stats.rekeys == 2
    assert host.take_entropy(host.available) == b"".join(sim.sent_entropy[-2:])


def test_a_replayed_entropy_frame_is_rejected() -> None:
    sim, host = keyed_pair()
    frame = sim.next_frame()
    host.receive(frame)
    first = host.take_entropy(host.available)
    host.receive(frame)
    assert host.available == 0
    assert host.stats.frames_rejected == 1
    assert first == sim.sent_entropy[-1]


def test_forged_entropy_frames_under_the_zero_key_are_never_output() -> None:
    """Before the re-key anyone can MAC frames (the key is zero); nothing may come out."""
    sim = EntropyKeySim(SERIAL, LTK)
    host = HostSession({SERIAL: LTK}, os.urandom)
    host.start()
    host.receive(sim.next_frame())  # S
    zero = SessionKeys(SERIAL, bytes(32))
    forged = b"* " + b"E!AA" + base64.b64encode(bytes(32)).ljust(48)
    forged = forged[:54] + zero.mac(forged[2:54]) + b"\r\n"
    host.receive(forged * 3)
    assert host.available == 0 and not host.keyed


def test_wrong_long_term_key_is_a_clear_error() -> None:
    sim = EntropyKeySim(SERIAL, LTK)
    host = HostSession({SERIAL: bytes(32)}, os.urandom)
    host.start()
    with pytest.raises(WrongLongTermKey, match="long-term key") as info:
        pump(sim, host, 10)
    assert host.available == 0
    assert "SeedToolTest0001" in str(info.value)


def test_unknown_serial_is_a_keyring_error() -> None:
    sim = EntropyKeySim(SERIAL, LTK)
    host = HostSession({bytes(12): LTK}, os.urandom)
    host.start()
    with pytest.raises(KeyringError, match="no long-term key for Entropy Key SeedToolTest0001"):
        host.receive(sim.next_frame())


def test_tampered_stream_past_the_threshold_fails() -> None:
    sim, host = keyed_pair(max_rejected=4)
    pump(sim, host, 10)
    good = host.take_entropy(host.available)
    assert good == b"".join(sim.sent_entropy)
    with pytest.raises(TamperedFrame, match="may be compromised"):
        for _ in range(10):
            frame = bytearray(sim.next_frame())
            frame[20] ^= 0x01
            host.receive(bytes(frame))
    assert host.available == 0
    assert host.stats.frames_rejected == 5


def test_device_failure_report_fails_the_source() -> None:
    sim, host = keyed_pair(info_every=3, failure_mode="3")
    with pytest.raises(DeviceError, match="correlated"):
        pump(sim, host, 10)


def test_a_lost_serial_frame_makes_the_host_reset_again() -> None:
    sim = EntropyKeySim(SERIAL, LTK)
    host = HostSession({SERIAL: LTK}, os.urandom)
    host.start()
    sim.host_write(host.take_writes())
    sim.next_frame()  # the serial frame is lost on the way
    for _ in range(HostSession.RESET_AFTER_IGNORED):
        host.receive(sim.next_frame())  # 'k' frames the host cannot use yet
    assert host.take_writes() == b"\x03"
    sim.host_write(b"\x03")
    pump(sim, host, 3)
    assert host.keyed


def test_a_reset_the_device_reads_before_our_nonce_does_not_lose_the_nonce() -> None:
    """Regression (CI flake): a second serial frame answering a reset we wrote *before*
    the nonce made the host forget the nonce, so every frame under the new session key
    counted as tampered. The device handles our bytes in order; so must the host."""
    stale = EntropyKeySim(SERIAL, LTK)  # frames of an earlier session still in the pipe
    stale._keyed, stale._keys = True, SessionKeys(SERIAL, os.urandom(32))
    stale._queue.clear()
    sim = EntropyKeySim(SERIAL, LTK)
    host = HostSession({SERIAL: LTK}, os.urandom)
    host.start()
    first_reset = host.take_writes()
    host.receive(stale.stream(HostSession.RESET_AFTER_IGNORED))
    second_reset = host.take_writes()
    assert first_reset == second_reset == b"\x03"
    sim.host_write(first_reset)
    host.receive(sim.stream(2))  # S, k: the host answers with a nonce
    nonce = host.take_writes()
    assert nonce[:1] == b"K"
    sim.host_write(second_reset)  # the device reads the second reset first ...
    sim.host_write(nonce)  # ... and then the nonce: K! and entropy under the new key
    host.receive(sim.stream(40))
    assert host.keyed and host.stats.frames_rejected == 0
    assert host.take_entropy(host.available) == b"".join(sim.sent_entropy)


def test_a_reset_written_after_the_nonce_cancels_it() -> None:
    sim, host = keyed_pair()
    host.receive(build_frame(sim._keys, b"k", b">", b"Please re-key session."))
    nonce = host.take_writes()
    host.start()  # e.g. the transport reopened: ^C goes out after the nonce
    sim.host_write(nonce + host.take_writes())
    pump(sim, host, 40)  # K! is ignored, the serial frame starts a fresh handshake
    assert host.keyed and host.stats.frames_rejected == 0
    assert len(sim.nonces) == 3  # the handshake's, the cancelled one, the fresh one
    assert host.take_entropy(host.available) == b"".join(sim.sent_entropy)


def test_a_stale_serial_frame_does_not_make_the_host_drop_its_nonce() -> None:
    """Regression (CI flake, second cause): a serial frame sent before the host opened the
    device took the place of the answer to the host's reset; the real answer then made
    the host forget the nonce the device was about to answer, and every frame under the
    new session key counted as tampered. No serial frame may cancel a nonce now."""
    stale = EntropyKeySim(SERIAL, LTK)  # powered up before we opened it: S, then k ...
    sim = EntropyKeySim(SERIAL, LTK)
    host = HostSession({SERIAL: LTK}, os.urandom)
    host.start()
    reset = host.take_writes()
    host.receive(stale.stream(2))  # the stale S and k: the host answers with a nonce
    nonce = host.take_writes()
    assert nonce[:1] == b"K"
    sim.host_write(reset + nonce)  # the device reads our reset, then our nonce
    host.receive(sim.stream(40))  # S (the real answer), K!, entropy under the new key
    assert host.keyed and host.stats.frames_rejected == 0
    assert host.take_entropy(host.available) == b"".join(sim.sent_entropy)


def test_a_device_reset_between_our_nonce_and_its_reading_keeps_the_nonce_answerable() -> None:
    """Reset by someone else (power, a ^C from another program) after our nonce went out and
    before the device read it: the host, now on the zero key, answers a 'k' with a second
    nonce, but the device answers the first one, then the second. Two nonces outstanding:
    the frame after the K! says which one it answered."""
    sim, host = keyed_pair()
    host.receive(build_frame(sim._keys, b"k", b">", b"Please re-key session."))
    first = host.take_writes()
    sim.reset()  # before it reads `first`
    host.receive(sim.next_frame())  # S
    host.receive(sim.next_frame())  # k
    second = host.take_writes()
    assert first[:1] == second[:1] == b"K" and first != second
    sim.host_write(first + second)  # K! under the zero key, K! under the first's key
    assert len(sim.nonces) == 3
    host.receive(sim.next_frame())  # two candidate keys: neither is used yet
    assert host.available == 0
    zero_k = build_frame(SessionKeys(SERIAL, bytes(32)), b"k", b">", b"Please re-key session.")
    host.receive(zero_k)  # nor is the zero key once the device has re-keyed
    assert host.stats.frames_rejected == 1
    pump(sim, host, 20)
    assert host.keyed and host.stats.frames_rejected == 1
    assert host.take_entropy(host.available) == b"".join(sim.sent_entropy)


def test_deframer_resynchronises_after_garbage() -> None:
    sim = EntropyKeySim(SERIAL, LTK)
    frames = [sim.next_frame() for _ in range(3)]
    d = Deframer()
    got = d.feed(b"junk*\r\n" + frames[0] + b"* partial" + frames[1] + frames[2][:30])
    got += d.feed(frames[2][30:])
    assert [f.raw for f in got] == frames
    assert d.skipped == len(b"junk*\r\n") + len(b"* partial")
    assert d.framing_errors == 2


# --------------------------------------------------------------------------- the source


@pytest.fixture
def keyring(tmp_path: Path) -> Path:
    path = tmp_path / "keyring"
    path.write_bytes(
        b"# Do not edit this directly, this file is managed by ekey-setkey\n"
        + format_keyring_line(SERIAL, LTK)
    )
    return path


def test_registered_with_honest_claims(keyring: Path) -> None:
    src = make_source("entropykey", keyring=str(keyring), device="/nonexistent/tty")
    assert isinstance(src, EntropyKeySource)
    assert src.raw is False and src.min_entropy == 7.0 and src.sample_bits == 8


def test_bad_serial_option_is_a_usage_error(keyring: Path) -> None:
    with pytest.raises(UsageError, match="label"):
        EntropyKeySource(keyring=str(keyring), serial="not-a-serial")


def test_missing_keyring_is_reported_by_available(tmp_path: Path) -> None:
    src = EntropyKeySource(keyring=str(tmp_path / "none"), device="/dev/null")
    avail = src.available()
    assert not avail.ok and "no keyring" in avail.reason


# ---- USB, through the fake pyusb backend

try:
    import usb.core  # noqa: F401  (pyusb: the `usb` extra)
except ImportError:  # pragma: no cover - the test script installs pyusb
    HAVE_PYUSB = False
else:
    HAVE_PYUSB = True
needs_pyusb = pytest.mark.skipif(
    not HAVE_PYUSB, reason="pyusb is not installed (pip install pyusb)"
)


def fake_key(**kw: object) -> Any:
    from devtools.fakeusb.entropykey import EntropyKeyUsb

    return EntropyKeyUsb(EntropyKeySim(SERIAL, LTK, **kw))  # type: ignore[arg-type]


def usb_source(keyring: Path, *devices: Any, **kw: object) -> EntropyKeySource:
    from devtools.fakeusb import FakeBackend

    return EntropyKeySource(keyring=str(keyring), backend=FakeBackend(list(devices)), **kw)


@needs_pyusb
def test_usb_path_reads_exactly_the_devices_entropy(keyring: Path) -> None:
    dev = fake_key(info_every=5)
    src = usb_source(keyring, dev, serial="SeedToolTest0001")
    avail = src.available()
    assert avail.ok, avail.reason
    assert avail.detail is not None and avail.detail["serial"] == "SeedToolTest0001"
    first = src.read(100)
    second = src.read(1000)
    assert first + second == b"".join(dev.sim.sent_entropy)[:1100]
    assert src.stats["frames_rejected"] == 0 and src.stats["rekeys"] == 1
    written = dev.written(0x03)
    assert written[:1] == b"\x03" and written[1:2] == b"K" and written.endswith(b".")
    # cdc_acm was detached for the read and is bound again afterwards
    assert [args[0] for args in dev.events("detach")] == [0, 1]
    src.close()
    assert dev.kernel_drivers == {0: "cdc_acm", 1: "cdc_acm"}


@needs_pyusb
def test_usb_wrong_long_term_key(tmp_path: Path) -> None:
    ring = tmp_path / "keyring"
    ring.write_bytes(format_keyring_line(SERIAL, bytes(32)))
    dev = fake_key()
    src = usb_source(ring, dev)
    with pytest.raises(WrongLongTermKey, match="ekey-rekey"):
        src.read(64)
    with pytest.raises(WrongLongTermKey):  # not trusted again in this run
        src.read(64)
    assert dev.kernel_drivers == {0: "cdc_acm", 1: "cdc_acm"}


@needs_pyusb
def test_usb_tampered_stream_past_threshold_fails(keyring: Path) -> None:
    dev = fake_key()
    count = {"e": 0}

    def flip_every_third_entropy_frame(frame: bytes) -> bytes:
        if frame[2:3] != b"E":
            return frame
        count["e"] += 1
        if count["e"] % 3:
            return frame
        bad = bytearray(frame)
        bad[30] ^= 0x04
        return bytes(bad)

    dev.tamper = flip_every_third_entropy_frame
    src = usb_source(keyring, dev, max_bad="3")
    got = src.read(64)  # the first two entropy frames are intact
    assert got == b"".join(dev.sim.sent_entropy[:2])
    with pytest.raises(TamperedFrame, match="cable may be compromised"):
        src.read(4096)
    with pytest.raises(TamperedFrame):
        src.read(1)


@needs_pyusb
def test_usb_unplugged_mid_read(keyring: Path) -> None:
    dev = fake_key()
    dev.unplug_after = 64 * 20
    src = usb_source(keyring, dev)
    with pytest.raises(DeviceError, match="unplugged"):
        src.read(10_000)
    assert not dev.present


@needs_pyusb
def test_usb_absent_device(keyring: Path) -> None:
    src = usb_source(keyring)
    avail = src.available()
    assert not avail.ok and "no Entropy Key" in avail.reason
    with pytest.raises(DeviceError, match="plug it in"):
        src.read(32)


# ---- tty (cdc_acm) path, against the simulator on a pseudo-terminal


@pytest.fixture
def pty_sim() -> Iterator[PtySimulator]:
    with PtySimulator(EntropyKeySim(SERIAL, LTK, info_every=9)) as p:
        yield p


def test_tty_path_reads_exactly_the_devices_entropy(keyring: Path, pty_sim: PtySimulator) -> None:
    src = EntropyKeySource(keyring=str(keyring), device=pty_sim.path)
    assert src.available().ok
    try:
        got = src.read(2000)
    finally:
        src.close()
    assert got == b"".join(pty_sim.sim.sent_entropy)[:2000]


def test_tty_device_directory_picks_the_serial(
    keyring: Path, pty_sim: PtySimulator, tmp_path: Path
) -> None:
    # /dev/entropykey/<serial> is how ekeyd's udev rule names a key's tty
    links = tmp_path / "entropykey"
    links.mkdir()
    (links / "SeedToolTest0001").symlink_to(pty_sim.path)
    src = EntropyKeySource(keyring=str(keyring), device=str(links), serial="SeedToolTest0001")
    try:
        assert len(src.read(96)) == 96
    finally:
        src.close()


def test_tty_unplugged_mid_read(keyring: Path, pty_sim: PtySimulator) -> None:
    src = EntropyKeySource(keyring=str(keyring), device=pty_sim.path)
    try:
        src.read(64)
        pty_sim.unplug()
        with pytest.raises(DeviceError, match="unplugged"):
            src.read(10**7)
    finally:
        src.close()


def test_serial_option_must_match_the_device(tmp_path: Path, pty_sim: PtySimulator) -> None:
    other = base64.b64decode("AAAAAAAAAAAAAAAA")
    ring = tmp_path / "two-keys"
    ring.write_bytes(format_keyring_line(SERIAL, LTK) + format_keyring_line(other, LTK))
    src = EntropyKeySource(keyring=str(ring), device=pty_sim.path, serial="AAAAAAAAAAAAAAAA")
    with pytest.raises(KeyringError, match="has serial SeedToolTest0001, not the requested"):
        src.read(32)


def test_serial_option_must_be_in_the_keyring(keyring: Path, pty_sim: PtySimulator) -> None:
    src = EntropyKeySource(keyring=str(keyring), device=pty_sim.path, serial="AAAAAAAAAAAAAAAA")
    assert "no key for serial AAAAAAAAAAAAAAAA" in src.available().reason
    with pytest.raises(KeyringError, match="no key for serial AAAAAAAAAAAAAAAA"):
        src.read(32)


def test_tty_device_that_sends_nothing_times_out(keyring: Path) -> None:
    master, slave = os.openpty()
    try:
        src = EntropyKeySource(keyring=str(keyring), device=os.ttyname(slave), timeout="0.2")
        with pytest.raises(DeviceError, match="sent nothing"):
            src.read(32)
    finally:
        os.close(master)
        os.close(slave)


def test_unix_socket_transport(keyring: Path, tmp_path: Path) -> None:
    """ekey-ulusbd serves a key on a UNIX socket; ekeyd (and we) connect to it."""
    sim = EntropyKeySim(SERIAL, LTK)
    path = str(tmp_path / "ekey.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    stop = threading.Event()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            while not stop.is_set():
                try:
                    readable, _, _ = select.select([conn], [], [], 0)
                    if readable:
                        data = conn.recv(4096)
                        if not data:
                            return
                        sim.host_write(data)
                    conn.sendall(sim.next_frame())  # blocks while the host is busy
                except OSError:
                    return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    src = EntropyKeySource(keyring=str(keyring), device=path)
    try:
        got = src.read(500)
    finally:
        src.close()
        stop.set()
        thread.join(timeout=10)
        server.close()
    assert got == b"".join(sim.sent_entropy)[:500]


# ---- the real ekeyd daemon as the peer of our simulator

EKEYD = shutil.which("ekeyd") or ("/usr/sbin/ekeyd" if os.path.exists("/usr/sbin/ekeyd") else None)


def _run_ekeyd(
    tmp_path: Path, pty: PtySimulator, ring_key: bytes, done: Callable[[], bool]
) -> tuple[bytes, str]:
    assert EKEYD is not None
    ring = tmp_path / "ekeyd-keyring"
    ring.write_bytes(format_keyring_line(pty.sim.serial, ring_key))
    out = tmp_path / "ekeyd-output"
    out.write_bytes(b"")  # SetOutputToFile needs an existing file
    conf = tmp_path / "ekeyd.conf"
    conf.write_text(
        f'Keyring "{ring}"\n'
        "Daemonise(false)\n"
        f'UnixControlSocket "{tmp_path / "ekeyd.sock"}"\n'
        f'SetOutputToFile "{out}"\n'
        f'AddEntropyKey "{pty.path}"\n'
    )
    proc = subprocess.Popen(
        [EKEYD, "-f", str(conf), "-p", str(tmp_path / "ekeyd.pid")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        # wait for an event, not for a time: `done` says when enough has happened;
        # the deadline only stops a broken run from hanging the suite
        deadline = time.monotonic() + 120
        while not done() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.terminate()
        try:
            log, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            log, _ = proc.communicate()
    return out.read_bytes(), log.decode(errors="replace")


@pytest.mark.skipif(EKEYD is None, reason="ekeyd is not installed (apt-get install ekeyd)")
def test_real_ekeyd_accepts_the_simulators_frames(tmp_path: Path) -> None:
    with PtySimulator(EntropyKeySim(SERIAL, LTK, info_every=16)) as pty:
        out_path = tmp_path / "ekeyd-output"

        def enough() -> bool:
            return out_path.exists() and out_path.stat().st_size >= 8192

        got, log = _run_ekeyd(tmp_path, pty, LTK, enough)
    assert len(got) >= 8192, log
    # Every 32-byte block ekeyd decrypted is one the simulator encrypted, in order.
    # (A subsequence rather than a prefix: if ekeyd resets the link, frames that
    # were already on their way are dropped, as with a real key.)
    blocks = [got[i : i + 32] for i in range(0, len(got), 32)]
    sent_iter = iter(pty.sim.sent_entropy)
    assert all(any(b == s for s in sent_iter) for b in blocks)
    # ekeyd sent our simulator a well-formed nonce (12 bytes: its counter + 8 random)
    assert pty.sim.nonces and len(pty.sim.nonces[0]) == 12


@pytest.mark.skipif(EKEYD is None, reason="ekeyd is not installed (apt-get install ekeyd)")
def test_real_ekeyd_rejects_the_simulator_under_a_wrong_key(tmp_path: Path) -> None:
    with PtySimulator(EntropyKeySim(SERIAL, LTK), idle_interval=0.002) as pty:
        # ekeyd resets and re-keys after a MAC failure; three re-keys make the point
        got, log = _run_ekeyd(tmp_path, pty, bytes(32), lambda: len(pty.sim.nonces) >= 3)
        assert len(pty.sim.nonces) >= 3, log
        assert pty.sim.sent_entropy  # the simulator did send entropy frames
    assert got == b""
