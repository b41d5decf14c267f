"""seedtool: fresh, signed, per-VM seeds from a trusted host, credited inside the guest.

This package must stay importable without click or any cloud SDK: the guest side
(`seedtool.shared.envelope`, `seedtool.shared.ed25519`, `seedtool.guest`) runs at boot with the
standard library alone.
"""

__version__ = "0.1.0"
