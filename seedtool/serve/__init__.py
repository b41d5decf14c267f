"""`seedtool serve`: the trusted host's entropy daemon.

`core.EntropyCore` reads the sources through the SP 800-90B health tests and serves
bytes from a DRBG (`drbg.HmacDrbg`); the listeners (EGD now) only ask it for bytes.
"""
