"""HMAC_DRBG(SHA-512) against NIST's known answers, and the properties the core relies on.

The vectors are from NIST CAVP's DRBG test vectors (drbgvectors_pr_false.zip,
HMAC_DRBG.rsp, "CAVS 14.3", section [SHA-512] [PredictionResistance = False]
[EntropyInputLen = 256] [NonceLen = 128] [ReturnedBitsLen = 2048]). The procedure is
the DRBGVS one (NIST, "The NIST SP 800-90A Deterministic Random Bit Generator
Validation System", 6.2): instantiate, reseed, generate twice, compare the second
output. All 240 SHA-512 vectors of that file pass; three of its section kinds are here.
"""

from __future__ import annotations

import pytest

from seedtool.serve.drbg import MAX_REQUEST_BYTES, OUTLEN, HmacDrbg, OutputBuffer

H = bytes.fromhex

VECTORS = [
    pytest.param(  # [PersonalizationStringLen = 0] [AdditionalInputLen = 0] COUNT = 0
        "48c121b18733af15c27e1dd9ba66a9a81a5579cdba0f5b657ec53c2b9e90bbf6",
        "bbb7c777428068fad9970891f879b1af",
        "",
        "e0ffefdadb9ccf990504d568bdb4d862cbe17ccce6e22dfcab8b4804fd21421a",
        "",
        ("", ""),
        "05da6aac7d980da038f65f392841476d37fe70fbd3e369d1f80196e66e54b8fadb1d60e1a0f3d4dc17"
        "3769d75fc3410549d7a843270a54a068b4fe767d7d9a59604510a875ad1e9731c8afd0fd50b825e2c5"
        "0d062576175106a9981be37e02ec7c5cd0a69aa0ca65bddaee1b0de532e10cfa1f5bf6a026e4737973"
        "6a099d6750ab121dbe3622b841baf8bdcbe875c85ba4b586b8b5b57b0fecbec08c12ff2a9453c47c6e"
        "32a52103d972c62ab9affb8e728a31fcefbbccc556c0f0a35f4b10ace2d96b906e36cbb72233201e53"
        "6d3e13b045187b417d2449cad1edd192e061f12d22147b0a176ea8d9c4c35404395b6502ef333a813b"
        "6586037479e0fa3c6a23",
        id="no-personalization-no-additional",
    ),
    pytest.param(  # [PersonalizationStringLen = 256] [AdditionalInputLen = 256] COUNT = 0
        "da740cbc36057a8e282ae717fe7dfbb245e9e5d49908a0119c5dbcf0a1f2d5ab",
        "46561ff612217ba3ff91baa06d4b5440",
        "fc227293523ecb5b1e28c87863626627d958acc558a672b148ce19e2abd2dde4",
        "1d61d4d8a41c3254b92104fd555adae0569d1835bb52657ec7fbba0fe03579c5",
        "b9ed8e35ad018a375b61189c8d365b00507cb1b4510d21cac212356b5bbaa8b2",
        (
            "b7998998eaf9e5d34e64ff7f03de765b31f407899d20535573e670c1b402c26a",
            "2089d49d63e0c4df58879d0cb1ba998e5b3d1a7786b785e7cf13ca5ea5e33cfd",
        ),
        "5b70f3e4da95264233efbab155b828d4e231b67cc92757feca407cc9615a660871cb07ad1a2e9a9941"
        "2feda8ee34dc9c57fa08d3f8225b30d29887d20907d12330fffd14d1697ba0756d37491b0a8814106e"
        "46c8677d49d9157109c402ad0c247a2f50cd5d99e538c850b906937a05dbb8888d984bc77f6ca00b0e"
        "3bc97b16d6d25814a54aa12143afddd8b2263690565d545f4137e593bb3ca88a37b0aadf79726b95c6"
        "1906257e6dc47acd5b6b7e4b534243b13c16ad5a0a1163c0099fce43f428cd27c3e6463cf5e9a9621f"
        "4b3d0b3d4654316f4707675df39278d5783823049477dcce8c57fdbd576711c91301e9bd6bb0d3e72d"
        "c46d480ed8f61fd63811",
        id="personalization-and-additional",
    ),
    pytest.param(  # [PersonalizationStringLen = 256] [AdditionalInputLen = 0] COUNT = 0
        "cded7aaeab1025a6053c12b8bca197c7963dee09f50c1cb9733411c72cd090b9",
        "1ff77f523678c1926b2b11354a55510f",
        "39a7196a2616a5329c4b09f3be521c2391fa37fce954a1fd259bde230c8d130e",
        "f915ac126f3ac6eddc6f9b857b124363ffb53fbb664a3d7cb910fbf558b833bb",
        "",
        ("", ""),
        "a4c97a54be091a7f1b56372c08b4dbe9a160e59bfb1b38dfeeff9bd8db5b4f19714c4719c9127e8cbd"
        "24e783900e71a77b1a8303c886655d859a0a5054cd84ed1c6ba111ad13dc121bd0869b21712bc24224"
        "c7e359e2de8f0933c982a18011856463fdb49cca5c468026ce024a569c98fa3b3cc488946fe9fe07dd"
        "18fd75863ffcfad32a2d0480e45b169f68cd6f31c623b4fbd3354270c51c494c614dccc27ddb5e2f9b"
        "cbbc3fc397384c9237ecaf6b47591f6779a52ab4c0381bd7fe73444c20d47d5f25a4413f8068557e7f"
        "d2745fdb88a88d262d1a2386c9e84a110008ecd8cb9aea883d4352d9e616abe759f10c867da1855ede"
        "d5a3eb5c4b20c95aabe6",
        id="personalization-only",
    ),
]


@pytest.mark.parametrize(
    "entropy, nonce, personalization, entropy_reseed, additional_reseed, additional, expected",
    VECTORS,
)
def test_nist_cavp_known_answers(
    entropy: str,
    nonce: str,
    personalization: str,
    entropy_reseed: str,
    additional_reseed: str,
    additional: tuple[str, str],
    expected: str,
) -> None:
    drbg = HmacDrbg(H(entropy), H(nonce), H(personalization))
    drbg.reseed(H(entropy_reseed), H(additional_reseed))
    n = len(H(expected))
    drbg.generate(n, H(additional[0]))
    assert drbg.generate(n, H(additional[1])) == H(expected)


def _fixed(seed: int = 1) -> HmacDrbg:
    return HmacDrbg(bytes([seed]) * 32, bytes([seed]) * 16)


def test_reseed_changes_the_stream() -> None:
    a, b = _fixed(), _fixed()
    assert a.generate(64) == b.generate(64)  # deterministic given its inputs
    b.reseed(b"\x02" * 32)
    assert a.generate(64) != b.generate(64)
    assert a.reseed_counter == 3 and b.reseed_counter == 2


def test_different_entropy_different_stream() -> None:
    assert _fixed(1).generate(64) != _fixed(2).generate(64)


@pytest.mark.parametrize("n", [16, 63, OUTLEN, 65, 4096])
def test_state_after_a_request_holds_no_returned_byte(n: int) -> None:
    drbg = _fixed()
    out = drbg.generate(n)
    assert len(out) == n
    # every attribute the object keeps (Key, V, counters): none contains any 16-byte
    # piece of the output (the last output block is not the new V: Update ran after it)
    kept = b"".join(v for v in vars(drbg).values() if isinstance(v, (bytes, bytearray)))
    assert all(out[i : i + 16] not in kept for i in range(0, n - 15))


def test_limits_are_refused() -> None:
    drbg = _fixed()
    with pytest.raises(ValueError, match="1 to 65536 bytes"):
        drbg.generate(0)
    with pytest.raises(ValueError, match="1 to 65536 bytes"):
        drbg.generate(MAX_REQUEST_BYTES + 1)
    with pytest.raises(ValueError, match="entropy input"):
        HmacDrbg(b"\x00" * 31, b"\x00" * 16)
    with pytest.raises(ValueError, match="nonce"):
        HmacDrbg(b"\x00" * 32, b"\x00" * 15)
    with pytest.raises(ValueError, match="entropy input"):
        drbg.reseed(b"\x00" * 31)


def test_output_buffer_erases_each_served_byte() -> None:
    buf = OutputBuffer(_fixed())
    served = [buf.read(n) for n in (64, 1, 100, 4000, 37, 50)]  # 4000 forces a refill
    held = buf.held()
    assert len(held) == OutputBuffer.BLOCK
    assert all(out[i : i + 16] not in held for out in served for i in range(len(out) - 15))
    # what was handed out of the current block is zeros; only the unserved rest is not
    used = 4000 + 37 + 50
    assert held[:used] == bytes(used) and held[used:] != bytes(len(held) - used)
    buf.discard()
    assert buf.held() == b""


def test_output_buffer_serves_the_generate_stream_in_order() -> None:
    # slices of one Generate call, so the buffer adds nothing and drops nothing
    buf, ref = OutputBuffer(_fixed()), _fixed()
    assert b"".join(buf.read(n) for n in (1000, 3000, 96)) == ref.generate(OutputBuffer.BLOCK)
    with pytest.raises(ValueError):
        buf.read(OutputBuffer.BLOCK + 1)
