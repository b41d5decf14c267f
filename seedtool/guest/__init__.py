"""The guest side: runs inside the VM at boot. Standard library only.

`core.credit_seed` verifies an envelope and credits it with RNDADDENTROPY (or mixes
it uncredited and says why); `cc_seedtool` (cloud_init_modules/) and `early` (the
seedtool-early.service launcher) are its two entry points; `install.install_guest`
puts all of it into an image root from the trusted host. See docs/guest.md.
Nothing here may log, print or store seed bytes.
"""
