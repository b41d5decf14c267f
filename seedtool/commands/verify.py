"""`seedtool verify`: check an envelope's signature against trusted keys and its validity."""

from __future__ import annotations

import click

from ..shared import envelope
from ..shared.errors import UsageError
from ..shared.pubkeys import load_public_keys, trusted_pairs
from ._io import read_envelope_file
from ._options import echo_json


@click.command("verify")
@click.argument("file", metavar="FILE|-")
@click.option("--trusted-key", "trusted", multiple=True, required=True, metavar="PUB",
              help="Trusted public key file or directory of .pub files (repeatable).")
@click.option("--skew", type=int, default=300, show_default=True,
              help="Allowed clock difference in seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def command(file: str, trusted: tuple[str, ...], skew: int, as_json: bool) -> None:
    """Verify an envelope: signature by a trusted key, not-before and not-after.

    Exits 0 only if a guest with these trusted keys would credit this seed
    (the guest also refuses a seed id it has consumed before).
    """
    keys = load_public_keys(trusted)
    if not keys:
        raise UsageError("no trusted public keys found in the given --trusted-key paths")
    try:
        env = envelope.verify(read_envelope_file(file), trusted_pairs(keys), skew=skew)
    except envelope.UntrustedKey as e:
        e.detail = "trusted keys:\n" + "\n".join(
            f"  {k.key_id.hex()}" + (f" ({k.comment})" if k.comment else "") for k in keys)
        raise
    result = env.summary()
    result["verified"] = True
    result["creditable_bits"] = env.creditable_bits
    if as_json:
        echo_json(result)
    else:
        click.echo(f"OK: seed {env.seed_id_hex} signed by key {env.key_id_hex}, "
                   f"{env.creditable_bits} bits creditable, valid until {env.not_after}")
