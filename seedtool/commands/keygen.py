"""`seedtool keygen`: an Ed25519 signing key (0600) and the public key to bake into images."""

from __future__ import annotations

import os

import click

from ..keys import generate_keypair
from ._options import (
    KEY_DEFAULT_HELP,
    PASSPHRASE_ENV,
    default_key_path,
    echo_json,
    read_passphrase,
)


@click.command("keygen")
@click.option("-o", "--out", "key_path", metavar="FILE", default=None,
              help=f"Private key path {KEY_DEFAULT_HELP}.")
@click.option("--pub", "pub_path", metavar="FILE", default=None,
              help="Public key path (default: the private key path with .pub).")
@click.option("--passphrase-file", type=click.Path(dir_okay=False), default=None,
              help="Encrypt the private key with the passphrase in this file (or in "
                   f"${PASSPHRASE_ENV}).")
@click.option("--comment", default="", help="Comment stored in the public key line.")
@click.option("--force", is_flag=True, help="Replace existing key files.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def command(key_path: str | None, pub_path: str | None, passphrase_file: str | None,
            comment: str, force: bool, as_json: bool) -> None:
    """Create an Ed25519 signing key and its public key file.

    Keep the private key on the trusted host; install the .pub file into images
    (seedtool bake) so guests can verify seeds. Several .pub files may be trusted
    at once, which is how keys are rotated.
    """
    key_path = key_path or default_key_path()
    pub_path = pub_path or (os.path.splitext(key_path)[0] + ".pub")
    os.makedirs(os.path.dirname(os.path.abspath(key_path)), mode=0o700, exist_ok=True)
    pub = generate_keypair(key_path, pub_path, read_passphrase(passphrase_file), comment, force)
    result = {"private_key": key_path, "public_key": pub_path, "key_id": pub.key_id.hex()}
    if as_json:
        echo_json(result)
    else:
        click.echo(f"key id {result['key_id']}")
        click.echo(f"private key: {key_path} (keep it on this host, mode 0600)")
        click.echo(f"public key:  {pub_path} (bake it into images)")
