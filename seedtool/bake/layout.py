"""The paths bake installs, removes and checks, in one place.

What is shared state (and why) is in the docstring of `seedtool.bake`; what "installed"
means is exactly what `seedtool.bake.install.install_guest` writes.
"""

from __future__ import annotations

from . import install

# --- what is shared state ---------------------------------------------------------------

SSH_DIR = "/etc/ssh"
SSH_HOST_PREFIX = "ssh_host_"
MACHINE_ID = "/etc/machine-id"
DBUS_MACHINE_ID = "/var/lib/dbus/machine-id"
MACHINE_ID_FORMS = ("uninitialized", "empty")
#: seed files some init system or boot loader loads at boot, then credits or mixes
RANDOM_SEEDS = (
    "/var/lib/systemd/random-seed",
    "/var/lib/random-seed",
    "/var/lib/urandom/random-seed",
    "/var/lib/misc/random-seed",
    "/etc/random-seed",
    "/boot/efi/loader/random-seed",
    "/efi/loader/random-seed",
    "/boot/loader/random-seed",
)
CREDENTIAL_SECRET = "/var/lib/systemd/credential.secret"
SEEDTOOL_STATE = "/" + install.STATE_DIR
CLOUD_STATE = "/var/lib/cloud"
CLOUD_KEEP = ("seed",)  # the NoCloud seed directory a builder may ship on purpose
LOG_DIR = "/var/log"
RANDOM_SEED_SERVICE = "systemd-random-seed.service"

# --- what "installed" means: exactly what install_guest writes ------------------------------

CC_MODULE = "/" + install.CC_MODULE
LAUNCHER = "/" + install.LAUNCHER
UNIT = f"/{install.UNIT_DIR}/{install.UNIT_NAME}"
WANTS_LINK = f"/{install.WANTS_DIR}/{install.UNIT_NAME}"
MASK = f"/etc/systemd/system/{install.UNIT_NAME}"
GUEST_CODE_DIR = f"/{install.PRIVATE_DIR}/seedtool"
GUEST_CORE = f"{GUEST_CODE_DIR}/guest/core.py"
KEYS_DIR = "/" + install.KEYS_DIR
POLICY = "/" + install.POLICY
CLOUD_CFG = "/" + install.CLOUD_CFG
CLOUD_CFG_D = "/" + install.CLOUD_CFG_D
PYTHON = "/usr/bin/python3"

# --- secrets bake does not own: found by the whole-image scan (imagescan) ---------------------

#: dropbear's host keys (Debian's dropbear: /etc/dropbear/dropbear_TYPE_host_key) and
#: dropbear-initramfs's, which Debian moved from /etc/dropbear-initramfs (bullseye) to
#: /etc/dropbear/initramfs (bookworm, dropbear 2022.82-1); both are dropbear's binary format
DROPBEAR_DIR = "/etc/dropbear"
DROPBEAR_INITRAMFS_DIRS = ("/etc/dropbear/initramfs", "/etc/dropbear-initramfs")
CLOUD_SEED = "/var/lib/cloud/seed"
