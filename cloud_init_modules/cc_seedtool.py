# This file is part of seedtool. See LICENSE file for license information.
"""Seedtool: verify a signed seed and credit it to the kernel before host keys exist.

cloud-init's own ``seed_random`` writes ``random_seed.data`` to /dev/urandom, which
mixes but never credits. This module, listed right after ``seed_random`` and before
``ssh`` in ``cloud_init_modules``, reads the same ``random_seed: {data, encoding}``
and, when ``data`` is a seedtool envelope in the one form ``seedtool userdata``
writes, signed by a key the image trusts, still valid and never seen on this disk,
credits it with RNDADDENTROPY. Anything else is mixed uncredited and the reason
recorded. A datasource's own ``random_seed`` (OpenStack, Azure) is mixed, and
credited only when the image's policy trusts that platform, for what its bytes can
carry (``seedtool.guest.platform_seed``). Afterwards the envelope is scrubbed from
cloud-init's own copies of user-data and metadata, in every encoding cloud-init
accepts (see ``seedtool.guest.scrub``).

Policy comes from system config only (/etc/seedtool/policy.json), never from
user-data. The module reports an error (cloud-init's status shows it; later modules
still run) only when that policy sets fail_closed, or is invalid: a misbuilt image.
It never logs seed bytes. The shared logic lives in ``seedtool.guest``, which the
image keeps in a private directory so a pip-installed seedtool cannot clash with it.

Signature note: cloud-init 20.4 (cloudinit/stages.py) and 22.4 call
``handle(name, cfg, cloud, log, args)`` positionally; 23.2+ passes ``log=`` only to a
handle with exactly five parameters (and logs a deprecation), otherwise
``handle(name=, cfg=, cloud=, args=)`` by keyword (cloudinit/config/modules.py). Six
parameters suit both.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import sys
import time
import zlib
from pathlib import Path
from typing import Any

#: where seedtool.bake.install puts the guest code in the image
PRIVATE_PATH = "/usr/lib/seedtool/python"
if os.path.isdir(PRIVATE_PATH) and PRIVATE_PATH not in sys.path:
    sys.path.insert(0, PRIVATE_PATH)

from seedtool.guest import core, scrub  # noqa: E402
from seedtool.guest.policy import load_policy  # noqa: E402
from seedtool.shared import envelope  # noqa: E402

try:
    from cloudinit.settings import PER_INSTANCE
except ImportError:  # only outside cloud-init (documentation tools)
    PER_INSTANCE = "once-per-instance"

LOG = logging.getLogger(__name__)

meta: dict[str, Any] = {
    "id": "cc_seedtool",
    "distros": ["all"],
    "frequency": PER_INSTANCE,
}

#: the encodings cloud-init's seed_random accepts (cc_seed_random._decode)
_B64 = ("b64", "base64")
_GZIP = ("gz", "gzip")
_RAW = ("", "raw")


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8", "replace")


def _decode(data: Any, encoding: Any) -> bytes | str:
    """The envelope from ``random_seed.data`` as cloud-init would decode it.

    Undecodable data is returned unchanged, so the envelope parser says why.
    """
    enc = str(encoding or "").lower()
    if enc in _B64:
        try:
            return base64.b64decode(_as_bytes(data))
        except (binascii.Error, ValueError):
            return _as_bytes(data)
    if enc in _GZIP:
        try:
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out = d.decompress(_as_bytes(data), envelope.MAX_TEXT + 1)
            return out
        except zlib.error:
            return _as_bytes(data)
    if enc in _RAW:
        return data if isinstance(data, (bytes, str)) else str(data)
    # an encoding seed_random itself refuses: hand over the text, the parser decides
    return _as_bytes(data)


def _pkl_store() -> Any:
    """cloud-init's own writer of obj.pkl: `cloudinit.sources.pkl_store` in 22.4.2,
    25.1 and 26.2, `cloudinit.stages._pkl_store` in 20.4.1 (Debian 11). Chosen by what
    this cloud-init has, never by its version number."""
    from cloudinit import sources

    store = getattr(sources, "pkl_store", None)
    if store is None:
        from cloudinit import stages

        store = getattr(stages, "_pkl_store")  # noqa: B009 - a private name, on purpose
    return store


def _platform(cloud: Any) -> str:
    ds = getattr(cloud, "datasource", None)
    for attr in ("platform_type", "dsname"):
        value = getattr(ds, attr, None)
        if isinstance(value, str) and value:
            return value.lower()
    return ""


def _datasource_seed(cloud: Any) -> tuple[bytes | None, Any]:
    """The datasource's own ``random_seed`` (OpenStack meta_data.json, Azure OEM0),
    and the value as the datasource holds it.

    The seed is decoded the way its platform sends it (strict base64; Azure's OEM0
    table header checked) into a ``platform_seed.DatasourceSeed``: bytes that know
    how many bits of them may be credited (none for text, a header, or a platform
    whose format is unknown). Core credits no more than that.
    """
    from seedtool.guest.platform_seed import decode  # already imported by core

    md = getattr(getattr(cloud, "datasource", None), "metadata", None)
    if not isinstance(md, dict):
        return None, None
    value = md.get("random_seed")
    seed = decode(_platform(cloud), value)
    return seed, (value if seed is not None else None)


def _instance_id(cloud: Any) -> str:
    try:
        return str(cloud.get_instance_id() or "")
    except Exception:
        return ""


#: where cloud-init's seed_random may write random_seed.data without keeping a copy
_SEED_DEVICES = ("/dev/urandom", "/dev/random")


def _envelope_raw(data: Any) -> bytes | None:
    """The raw envelope when ``data`` (as decoded) is a seedtool envelope, else None."""
    if not isinstance(data, (bytes, str)) or not data:
        return None
    try:
        raw = envelope.decode_text(data)
        envelope.parse(raw)
    except Exception:
        return None
    return raw


def _form_problem(mycfg: dict, data: Any) -> str:
    """Why an envelope in ``random_seed`` may not be credited, or "".

    Only the form ``seedtool userdata`` writes is creditable: ``data`` the one-line
    canonical base64 text and ``encoding: b64``, nothing copied to a file. Any other
    form (gzip, ``!!binary``, folded or wrapped text) still reaches seed_random, and
    each is one more spelling a scrub has to find in every copy cloud-init keeps.
    """
    raw = _envelope_raw(data)
    if raw is None:
        return ""  # not an envelope: core says why it is not credited
    given, enc = mycfg.get("data"), mycfg.get("encoding")
    problems = []
    if not isinstance(given, str):
        problems.append("data is binary (!!binary)")
    elif given != envelope.encode_text(raw):
        problems.append("data is not the one-line base64 text")
    if enc is None:
        problems.append("encoding is not set (raw), not 'b64'")
    elif enc != "b64":
        problems.append(f"encoding is {str(enc)[:16]!r}, not 'b64'")
    target = mycfg.get("file")
    if target is not None and target not in _SEED_DEVICES:
        # cloud-init's seed_random (cc_seed_random.handle) appends the decoded data there
        problems.append(f"random_seed.file is {str(target)[:80]}, where seed_random copied it")
    return "not in the form seedtool writes: " + "; ".join(problems) if problems else ""


def _seed_file(mycfg: dict) -> str | None:
    """The regular file seed_random wrote random_seed.data to, if not a device."""
    target = mycfg.get("file")
    if not isinstance(target, str) or target in _SEED_DEVICES:
        return None
    try:
        st = os.lstat(target)
    except OSError:
        return None
    return target if st.st_mode & 0o170000 == 0o100000 else None


def _scrub(cloud: Any, cfg: dict, values: list[Any], secret: bytes | None,
           seed_file: str | None) -> None:
    """Remove what is ours from cloud-init's in-memory and on-disk copies of user-data.

    Ours: every value in `values` that is a seedtool envelope (as delivered or
    decoded), and `secret`, a datasource seed this module credited. Nothing else is
    touched. `seed_file` is where seed_random copied random_seed.data (scrubbed too).
    """
    needles = scrub.Needles()
    for value in values:
        needles = needles + scrub.needles_for(value)
    if secret:
        needles = needles + scrub.Needles.secret(bytes(secret))
    if not needles:
        LOG.debug("seedtool: scrubbed nothing: %s",
                  "no seedtool envelope was offered" if any(values) else "no seed was offered")
        return
    t_start = time.monotonic()
    scrubber = scrub.Scrubber(needles)
    ds = getattr(cloud, "datasource", None)
    in_memory = scrubber.scrub_object(cfg)
    if ds is not None:
        in_memory += scrubber.scrub_object(ds)
        pkl = None
        try:
            pkl = cloud.paths.get_ipath_cur("obj_pkl")
        except Exception:
            pkl = None
        if in_memory and pkl and os.path.exists(pkl):
            try:
                _pkl_store()(ds, pkl)
            except Exception as e:
                LOG.debug("seedtool: could not re-pickle the datasource (%s)", type(e).__name__)
    t_tree = time.monotonic()
    # Not fsynced: the kernel writes the edits back within about 30 s (dirty_expire).
    # A flush here cost 50-95 ms of the module's time in TCG boots, to shorten a
    # window in which the copy left behind is worthless for crediting (the ledger,
    # which is fsynced, already holds the seed id) and while the platform still
    # serves the same user-data anyway (docs/threat-model.md).
    scrubber.scrub_tree(Path("/"), durable=False)
    if seed_file:
        try:
            scrubber.scrub_file(seed_file)
        except OSError:
            pass
    changed = scrubber.changed
    LOG.debug(
        "seedtool: scrubbed the seed from %d in-memory copies and %d files "
        "(in memory %.3f s, files %.3f s): %s%s",
        in_memory,
        len(changed),
        t_tree - t_start,
        time.monotonic() - t_tree,
        ", ".join(changed),
        "; not fully searched: " + ", ".join(f"{k} ({v})" for k, v in scrubber.incomplete.items())
        if scrubber.incomplete else "",
    )


def _run(cfg: dict, cloud: Any) -> core.Outcome:
    mycfg = cfg.get("random_seed") or {}
    if not isinstance(mycfg, dict):
        mycfg = {}
    given = mycfg.get("data")
    data: bytes | str | None = None
    origin = "user-data"
    if given:
        data = _decode(given, mycfg.get("encoding"))
    uncreditable = _form_problem(mycfg, data) if given else ""
    platform = _platform(cloud)
    ds_seed, ds_value = _datasource_seed(cloud)
    if data is None and ds_seed is not None and ds_seed.startswith(envelope.MAGIC):
        # a seedtool envelope delivered through the platform's own seed channel
        data, ds_seed, origin = ds_seed, None, f"datasource:{platform or 'unknown'}"
    elif data is None and ds_seed is not None:
        origin = f"datasource:{platform or 'unknown'}"
    t0 = time.monotonic()
    network = _ask_seed_servers()
    t_net = time.monotonic()
    outcome = core.credit_seed(
        data,
        origin,
        stage=core.STAGE_CLOUD_INIT,
        instance_id=_instance_id(cloud),
        platform_seed=ds_seed,
        platform=platform,
        uncreditable=uncreditable,
        network=network,
    )
    t1 = time.monotonic()
    # a datasource seed is ours to scrub only once credited; an envelope always is
    # (not when only the seed servers' envelopes were credited)
    ds_credited = outcome.credited and (outcome.servers is None or outcome.origin_credited)
    secret = ds_seed if ds_credited and data is None else None
    _scrub(cloud, cfg, [given, data, ds_value], secret, _seed_file(mycfg))
    LOG.debug("seedtool: seed servers took %.3f s, credit %.3f s, scrubbing %.3f s "
              "(credit phases: %s)", t_net - t0, t1 - t_net, time.monotonic() - t1,
              ", ".join(f"{k} {v:.3f}" for k, v in outcome.timings.items()))
    if platform == "gce" and outcome.verified and outcome.seed_id:
        from seedtool.guest import gce  # urllib.request: only on GCE

        gce.report_consumed(outcome.seed_id)
    return outcome


def _ask_seed_servers() -> Any:
    """What the image's seed servers answered (`netseed.fetch_for_image`), or None when
    it has none (then no TLS code is even imported). Never raises: a bug here is one
    result, "internal error", so the user-data seed is still credited."""
    from seedtool.guest.policy import SEED_SERVERS_PATH

    if not os.path.exists(SEED_SERVERS_PATH):
        return None  # the usual image: not even netseed is imported (ms under emulation)
    from seedtool.guest import netseed

    try:
        return netseed.fetch_for_image("/")
    except Exception as e:
        LOG.warning("seedtool: asking the seed servers failed internally (%s)", type(e).__name__)
        return netseed.NetOutcome(results=(netseed.ServerResult(
            server=netseed.CONFIG_PATH, reason="internal error", detail=type(e).__name__),))


def _fail_closed() -> bool:
    """Must an internal error fail? When the policy says so, or cannot be read: an
    invalid policy is a misbuilt image, never a quiet ``fail_closed: false``."""
    try:
        return load_policy(core.Paths.under("/").policy).fail_closed
    except Exception:
        return True


def handle(name: str, cfg: dict, cloud: Any, args: Any = None, *extra: Any, **kwargs: Any) -> None:
    try:
        outcome = _run(cfg, cloud)
    except Exception as e:  # a bug must not stop the boot; the reason is in the log
        LOG.warning("%s: seed not credited: internal error (%s)", name, type(e).__name__)
        if _fail_closed():
            raise core.SeedNotCredited(
                "seedtool failed internally and the image's seed policy sets fail_closed "
                "(or is invalid); see /var/log/cloud-init.log"
            ) from None
        return
    LOG.info("%s", outcome.line())
    for note in outcome.notes:
        LOG.info("%s: %s", name, note)
    # after the credit (or the uncredited mix) and the scrub: an invalid policy or an
    # uncredited seed under fail_closed is an error cloud-init records in its status
    # (result.json, `cloud-init status`), and its later modules still run
    outcome.raise_if_fail_closed()
