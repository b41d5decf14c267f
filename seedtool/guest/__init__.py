"""The guest side: runs inside the VM at boot. Standard library only.

`core.credit_seed` verifies an envelope and credits it with RNDADDENTROPY (or mixes
it uncredited and says why): `decision.decide` says what to credit, mix and record,
without any I/O, and `core` gathers its inputs and carries it out. `cc_seedtool`
(cloud_init_modules/) and `early` (the seedtool-early.service launcher) are its two
entry points. What runs at boot is this package and `seedtool.shared`, copied whole
into an image by the host's `seedtool.bake.install`; they import nothing else but the
standard library (tests/guest/test_closure.py). See docs/guest.md.
Nothing here may log, print or store seed bytes.
"""
