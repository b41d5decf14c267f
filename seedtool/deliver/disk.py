"""Seeding a disk image before its first boot: `seed_image()`.

`seed_image` writes a fresh envelope (base64 text, as `seedtool generate` writes it) to
`/var/lib/seedtool/seed` (0600, root:root; `/var/lib/seedtool` 0700 if it has to be
made) inside a disk image, for the guest's early-boot unit to verify and credit. The
image is opened through `seedtool.image.open.open_target`, which refuses an image in
use and finds its Linux root (debugfs for raw ext, libguestfs for anything else).

Where the booted system reads it (`seedtool.image.fstab`): the root's /etc/fstab may
mount /var, /var/lib or /var/lib/seedtool from a file system of its own; then the seed,
and the "already booted" checks (ledger, status), go to that file system at the path
below its mount point, and nothing is written into the root's directory, which that
mount hides. Sources are matched against the image's own file systems
(`seedtool.image.formats.image_volumes`): `UUID=` and `LABEL=` from ext superblocks (or
`blkid -p` for other types), `PARTUUID=` and `PARTLABEL=` from the partition table. What
does not resolve to a file system of this image that the chosen backend writes is
refused, naming the mount.

Refusals, each before anything is written: those of `open_target` (not a regular file,
read-only, mounted or attached to a loop device, in use, no Linux root, an ext4 journal
that needs recovery), the image is readable by group or others (it would give its seed
to every local user, like any other seed carrier that is not 0600; `allow_readable`
accepts that), it still holds an unconsumed seed (`force` replaces it), or it has
booted with seedtool already (ledger or status present; `force` seeds it anyway for its
own next boot). The seed is made only once every check has passed, and is never
printed or logged.
"""

from __future__ import annotations

import os
import stat as stat_mod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ..image.formats import image_volumes
from ..image.fs import TargetFS
from ..image.fstab import (
    FSTAB_MAX,
    MountEntry,
    MountRefused,
    Placement,
    check_mounted,
    parse_fstab,
    place,
)
from ..image.inuse import ImageRefused
from ..image.open import Image, OpenedTarget, open_ext, open_target, partition_label
from ..image.partitions import PartitionTable, read_partitions
from ..shared.errors import DeliveryError

SEED_DIR = "/var/lib/seedtool"
SEED_PATH = SEED_DIR + "/seed"
#: the guest writes these once it has booted with seedtool (seedtool.guest.core)
BOOTED_MARKERS = (SEED_DIR + "/ledger", SEED_DIR + "/status.json")
FSTAB = "/etc/fstab"
#: mount units for SEED_DIR's path (systemd.mount(5): named after the escaped mount
#: point) in the unit directories an image carries (systemd.unit(5), unit load path)
MOUNT_UNIT_DIRS = ("/etc/systemd/system", "/usr/lib/systemd/system")
MOUNT_UNITS = ("var.mount", "var-lib.mount", "var-lib-seedtool.mount")


@dataclass(frozen=True)
class SeedResult:
    image: str
    seed_id: str
    backend: str
    partition: int | None
    target: str  # the backend's description of what was written to
    why: str
    replaced: bool  # an earlier seed or a booted state was overridden with force
    summary: Mapping[str, Any]  # the envelope summary: never the seed
    warnings: tuple[str, ...] = ()
    #: the path written inside the file system that holds it (below its mount point)
    seed_path: str = SEED_PATH
    #: the mount point of that file system in the booted system ("/" for the root)
    mount_point: str = "/"
    #: where that file system is, for the user: "partition 3 (mounted at /var)"
    where: str = ""
    #: the root file system's partition (whose /etc/fstab was read)
    root_partition: int | None = None


class _MakesSeeds(Protocol):
    def new(self) -> Any: ...  # a seedtool.generate.NewSeed



# ---- seeding ----------------------------------------------------------------------------


@dataclass
class _SeedHome:
    """The file system and directory the booted system reads the seed from."""

    fs: TargetFS
    dir: str  # SEED_DIR as seen inside `fs` (below its mount point)
    mount_point: str  # "/" for the root
    partition: int | None
    where: str
    own: bool  # opened here for a separate file system: close it after use

    @property
    def seed(self) -> str:
        return self.dir.rstrip("/") + "/seed"

    @property
    def markers(self) -> tuple[str, ...]:
        return tuple(self.dir.rstrip("/") + "/" + m.rsplit("/", 1)[1] for m in BOOTED_MARKERS)


def _refuse_mount_units(path: str, fs: TargetFS) -> None:
    """A systemd mount unit for /var, /var/lib or /var/lib/seedtool mounts a file system
    seedtool does not follow (it reads /etc/fstab only): refuse rather than write a seed
    that unit would hide."""
    for d in MOUNT_UNIT_DIRS:
        try:
            names = set(fs.listdir(d))  # one listing, not a lookup per unit
        except DeliveryError:
            continue  # no such directory
        for unit in MOUNT_UNITS:
            if unit in names:
                point = "/" + unit[:-len(".mount")].replace("-", "/")
                raise MountRefused(
                    f"{path}: {d}/{unit} mounts {point}, where the booted system reads "
                    f"{SEED_DIR}, and seedtool follows /etc/fstab only; move that mount "
                    "into the image's /etc/fstab, or deliver the seed in user-data instead "
                    "(seedtool userdata or nocloud)"
                )


def _read_fstab(path: str, fs: TargetFS) -> list[MountEntry]:
    _refuse_mount_units(path, fs)
    st = fs.stat(FSTAB)
    if st is None:
        return []  # no fstab: everything is on the root
    if not stat_mod.S_ISREG(st.mode):
        raise ImageRefused(
            f"{FSTAB} in {path} is not a regular file (a symlink?), so seedtool cannot "
            "tell where the booted system reads /var/lib/seedtool; make it a regular file"
        )
    if st.size > FSTAB_MAX:
        raise ImageRefused(
            f"{FSTAB} in {path} is {st.size} bytes, more than any real fstab "
            f"({FSTAB_MAX} bytes at most); check the image"
        )
    return parse_fstab(fs.read(FSTAB).decode("utf-8", "surrogateescape"))


def _seed_home(path: str, opened: OpenedTarget) -> _SeedHome:
    """Where the booted system reads SEED_DIR: the root, or a file system the root's
    fstab mounts on its path (refused, naming the mount, if seedtool cannot write it)."""
    entries = _read_fstab(path, opened.fs)
    if opened.backend != "debugfs":
        root_where = (f"partition {opened.partition}" if opened.partition is not None
                      else "the root file system")
        entry = check_mounted(SEED_DIR, entries, opened.fs.mounts(), path)
        where = root_where if entry is None else f"{entry.point} ({entry.source}, mounted " \
            "by libguestfs)"
        return _SeedHome(opened.fs, SEED_DIR, entry.point if entry else "/",
                         opened.partition, where, own=False)
    table = read_partitions(path)
    volumes = image_volumes(path, table)
    root = next((v for v in volumes if v.number == opened.partition), None)
    if root is None:  # cannot happen: the root was opened from this table
        raise ImageRefused(f"the root file system of {path} is not in its partition table")
    placement = place(SEED_DIR, entries, volumes, root, path)
    if placement.volume.number == root.number:
        return _SeedHome(opened.fs, placement.path, "/", root.number, placement.where,
                         own=False)
    return _open_separate(path, opened, placement, table)


def _open_separate(path: str, opened: OpenedTarget, placement: Placement,
                   table: PartitionTable) -> _SeedHome:
    vol, mount = placement.volume, placement.mount
    assert mount is not None
    if vol.kind != "ext":
        raise MountRefused(
            f"{path}: its /etc/fstab (line {mount.line}) mounts {mount.point} from "
            f"{mount.source}, which is {vol.name}, holding "
            f"{vol.kind or 'no file system seedtool recognises'}; the debugfs path writes "
            "ext2/3/4 only: use --backend libguestfs"
        )
    part = table.get(vol.number) if vol.number is not None else None
    label = partition_label(table, part) if part is not None else vol.name
    separate = open_ext(path, vol.offset, vol.number,
                         f"{label}, mounted at {mount.point} by /etc/fstab", opened.warnings)
    # an older seed in the root's own directory is hidden by the mount: never credited,
    # and carried by every copy of the image
    try:
        if opened.fs.stat(SEED_PATH) is not None:
            opened.warnings.append(
                f"the root file system of {path} holds {SEED_PATH}, hidden under the "
                f"{mount.point} mount, so it is never credited and every copy of the image "
                "carries it: remove it from the root file system")
    except DeliveryError:
        pass
    return _SeedHome(separate.fs, placement.path, mount.point, vol.number, placement.where,
                     own=True)


def _refuse_if_used(home: _SeedHome, path: str, force: bool) -> bool:
    """Raise if the image has booted with seedtool or holds a seed (unless force);
    return True if force overrides either."""
    fs = home.fs
    booted = [m for m in home.markers if fs.stat(m) is not None]
    seeded = fs.stat(home.seed) is not None
    on = "" if home.mount_point == "/" else f" on the file system mounted at " \
        f"{home.mount_point}"
    if booted and not force:
        raise ImageRefused(
            f"{path} has already booted with seedtool ({booted[0]} exists{on}): a disk "
            "that has booted holds per-VM state (host keys, machine-id, the ledger) and "
            "must not be re-seeded for cloning; use --force to seed it for its own next boot"
        )
    if seeded and not force:
        raise ImageRefused(
            f"{path} already holds an unconsumed seed ({home.seed}{on}); it has not "
            "booted since it was seeded: use --force to replace that seed"
        )
    return bool(booted or seeded)


def seed_image(path: str, factory: _MakesSeeds, partition: int | None = None,
               force: bool = False, backend: str = "auto",
               allow_readable: bool = False) -> SeedResult:
    """Write one fresh envelope from `factory.new()` into the image at `path`.

    Every refusal happens before the seed is made; on failure nothing is left behind
    (no seed file, no directory we created). `allow_readable` accepts an image that
    group or others may read (refused by default: they could read the seed).
    """
    path = os.fspath(path)
    with open_target(Image(path), writable=True, partition=partition, backend=backend,
                     allow_readable=allow_readable) as opened:
        return _seed_opened(path, opened, factory, force)


def _seed_opened(path: str, opened: OpenedTarget, factory: _MakesSeeds, force: bool
                 ) -> SeedResult:
    home = _seed_home(path, opened)
    ok = False
    try:
        result = _seed_at(path, opened, home, factory, force)
        ok = True
    finally:
        if home.own:
            try:
                home.fs.close()
            except DeliveryError:
                if ok:
                    raise
    return result


def _seed_at(path: str, opened: OpenedTarget, home: _SeedHome, factory: _MakesSeeds,
             force: bool) -> SeedResult:
    fs = home.fs
    replaced = _refuse_if_used(home, path, force)
    # the directories to make, outermost first: parents 0755 (e.g. /lib on a fresh /var
    # file system), the seed's own directory 0700
    missing: list[str] = []
    cur = home.dir.rstrip("/")
    while cur and fs.stat(cur) is None:
        missing.insert(0, cur)
        cur = cur.rsplit("/", 1)[0]
    st = fs.stat(home.dir)
    if st is not None and not stat_mod.S_ISDIR(st.mode):
        raise ImageRefused(
            f"{home.dir} in {path} ({home.where}) exists but is not a directory; the "
            "image is not laid out as seedtool expects: remove it"
        )
    seed = factory.new()
    text = (seed.text + "\n").encode("ascii")
    made: list[str] = []
    try:
        for d in missing:
            fs.mkdir(d, 0o700 if d == home.dir.rstrip("/") else 0o755)
            made.append(d)
        fs.write(home.seed, text, mode=0o600, uid=0, gid=0)
    except BaseException:
        for d in reversed(made):
            try:
                fs.rmdir(d)
            except DeliveryError:  # debugfs and libguestfs errors included
                pass
        raise
    return SeedResult(
        image=path,
        seed_id=seed.seed_id,
        backend=opened.backend,
        partition=home.partition,
        target=fs.description,
        why=opened.why,
        replaced=replaced,
        summary=dict(seed.summary),
        warnings=tuple(opened.warnings),
        seed_path=home.seed,
        mount_point=home.mount_point,
        where=home.where,
        root_partition=opened.partition,
    )
