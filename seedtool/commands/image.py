"""`seedtool image ...`: work on disk images that are not running (`seed` for now).

A click group; each subcommand is one function here and one line in `SUBCOMMANDS`
(`image.add_command(...)`), so adding one (e.g. `image inspect`) touches one place.
"""

from __future__ import annotations

import click

from ._options import SeedOptions, echo_json, seed_options


@click.group("image")
def command() -> None:
    """Work on disk images that are not running: seed one for its next boot."""


@click.command("seed", short_help="Write a fresh seed into DISK for its next boot.")
@click.argument("disk", type=click.Path(dir_okay=False))
@seed_options
@click.option("--partition", type=int, default=None, metavar="N",
              help="Use partition N as the root (default: the one with os-release).")
@click.option("--backend", type=click.Choice(["auto", "debugfs", "libguestfs"]),
              default="auto", show_default=True,
              help="debugfs for raw ext4 images, libguestfs for anything else.")
@click.option("--force", is_flag=True,
              help="Replace an unconsumed seed, or seed a disk that has already booted.")
@click.option("--allow-readable-image", "allow_readable", is_flag=True,
              help="Seed DISK even if group or others can read it (they can then read "
                   "the seed); refused by default: chmod 600 DISK instead.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the seed id, partition and backend (never the seed) as JSON.")
def seed(disk: str, seeds: SeedOptions,
         partition: int | None, backend: str, force: bool, allow_readable: bool,
         as_json: bool) -> None:
    """Write a fresh signed seed to /var/lib/seedtool/seed (0600, root) inside DISK,
    for the guest's early-boot unit to credit on its next boot.

    The seed goes where the booted system reads that path: when the image's
    /etc/fstab mounts /var, /var/lib or /var/lib/seedtool from a file system of its
    own (by UUID=, LABEL=, PARTUUID=, PARTLABEL= or /dev/vdaN), it is written there,
    below the mount point; a mount seedtool cannot write (LVM or LUKS on the fast
    path, network, tmpfs, another disk) is refused, naming it.

    DISK must be readable by its owner only (chmod 600 DISK): anyone who can read the
    image can read its seed. Raw images with ext4 are written directly with debugfs
    (no root, no mount); other formats and file systems go through libguestfs. Give
    each VM's disk its own seed: seed the copy, not the base image you clone from.
    """
    from ..deliver.disk import seed_image

    with seeds.factory() as f:
        result = seed_image(disk, f, partition=partition, force=force, backend=backend,
                            allow_readable=allow_readable)
    for w in result.warnings:
        click.echo(f"seedtool: warning: {w}", err=True)
    if as_json:
        echo_json({"image": result.image, "seed_id": result.seed_id,
                   "partition": result.partition, "backend": result.backend,
                   "target": result.target, "chosen": result.why,
                   "root_partition": result.root_partition,
                   "seed_path": result.seed_path, "mount_point": result.mount_point,
                   "replaced": result.replaced, "key_id": result.summary.get("key_id"),
                   "not_after": result.summary.get("not_after")})
    else:
        seed_path = "/var/lib/seedtool/seed"
        where = (result.where if result.seed_path == seed_path else
                 f"{result.where}, as {result.seed_path} there")
        click.echo(f"{disk}: seed {result.seed_id} written to {seed_path} on "
                   f"{where} via {result.backend} ({result.why})"
                   + (", replacing the earlier state (--force)" if result.replaced else ""))


#: the subcommands of `seedtool image`; add one line per new subcommand
SUBCOMMANDS: tuple[click.Command, ...] = (seed,)
for _sub in SUBCOMMANDS:
    command.add_command(_sub)
