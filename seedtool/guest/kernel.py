"""The kernel's random pool, from user space: probe, credit, mix, reseed, log.

Facts used here (include/uapi/linux/random.h, drivers/char/random.c, random(4)):

* `RNDADDENTROPY` = `_IOW('R', 0x03, int[2])` = 0x40085203 takes
  `struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }`, mixes
  `buf` into the input pool and credits `entropy_count` bits. It needs
  CAP_SYS_ADMIN; without it the ioctl fails with EPERM.
* Writing to /dev/urandom mixes but never credits.
* `RNDRESEEDCRNG` = 0x5207 (4.17+, CAP_SYS_ADMIN) reseeds the CRNG from the pool
  now, so input added after the CRNG was already ready reaches its output at once
  instead of at the next periodic reseed.
* `getrandom(1, GRND_NONBLOCK)` fails with EAGAIN until the CRNG is ready (3.17+), on
  both generations of the driver below.
* Two generations of drivers/char/random.c, told apart by what /proc shows, never by
  a version number (the stable kernels took the 5.18 rewrite in 2022: Debian 11's
  5.10.223 has the new one). The old driver: a 4096-bit input pool (`poolsize` 4096) whose
  estimate `entropy_avail` rises with every credit (capped at the pool size) and
  falls as reseeds and /dev/random draw from it; the CRNG is ready once 128 bits are
  credited, and afterwards reseeds from the pool only every 300 s
  (CRNG_RESEED_INTERVAL) unless asked with RNDRESEEDCRNG. The new one (the BLAKE2s
  rewrite of 5.18): `poolsize` is 256 and `entropy_avail` counts credits only up to the 256
  bits that make the CRNG ready, then stays at 256; a credit still mixes its whole
  buffer, and the CRNG reseeds on a schedule that starts short after boot.

Nothing here logs or returns the bytes it is given; the ioctl buffer is a
bytearray wiped after use.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

RNDADDENTROPY = 0x40085203
RNDRESEEDCRNG = 0x5207
#: kernel log level 5 (notice), the level of the kernel's own "random: crng init done"
#: (pr_notice in drivers/char/random.c): wherever that line is shown, ours is too
KMSG_LEVEL = 5
#: /dev/kmsg refuses records longer than about 1 KiB (LOG_LINE_MAX - prefix)
KMSG_MAX = 900


def crng_state() -> str:
    """'ready' when the kernel CRNG is initialised, else 'not-ready'."""
    getrandom = getattr(os, "getrandom", None)
    if getrandom is None:  # not Linux, or Python without it: say so honestly
        return "unknown"
    try:
        getrandom(1, os.GRND_NONBLOCK)
    except BlockingIOError:
        return "not-ready"
    except OSError:
        return "unknown"
    return "ready"


#: `poolsize` of the 5.18 rewrite (POOL_BITS = BLAKE2S_HASH_SIZE * 8); 4096 before it
POOL_BITS_BLAKE2S = 256


def pool_bits(proc_random: str) -> int | None:
    """/proc/sys/kernel/random/poolsize: 4096 for the old driver, 256 for the 5.18 rewrite; None
    when unreadable."""
    return _read_int(os.path.join(proc_random, "poolsize"))


def entropy_avail(proc_random: str) -> int | None:
    """/proc/sys/kernel/random/entropy_avail (see the module doc for what it means on
    each generation); None when unreadable."""
    return _read_int(os.path.join(proc_random, "entropy_avail"))


def _read_int(path: str) -> int | None:
    try:
        with open(path, "rb") as f:
            return int(f.read(32).strip())
    except (OSError, ValueError):
        return None


def add_entropy(device: str, data: bytes | bytearray, bits: int) -> None:
    """Mix `data` into the pool and credit `bits` with RNDADDENTROPY; raise OSError."""
    if bits < 0 or bits > 8 * len(data):
        raise ValueError("cannot credit more bits than the buffer holds")
    buf = bytearray(struct.pack("ii", bits, len(data)))
    buf += data
    try:
        fd = os.open(device, os.O_WRONLY | os.O_CLOEXEC)
        try:
            # mutate_flag=True: the kernel gets the buffer itself and we get the int
            # return value, not a copy of the buffer (which holds the seed)
            rc = fcntl.ioctl(fd, RNDADDENTROPY, buf, True)
        finally:
            os.close(fd)
    finally:
        for i in range(len(buf)):
            buf[i] = 0
    if rc != 0:  # ioctl() raises on -1; anything else would be a kernel surprise
        raise OSError(errno.EIO, f"RNDADDENTROPY returned {rc}")


def write_uncredited(device: str, data: bytes | bytearray) -> None:
    """Mix `data` into the pool without crediting it; raise OSError."""
    fd = os.open(device, os.O_WRONLY | os.O_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    finally:
        os.close(fd)


def reseed(device: str) -> bool:
    """Ask the CRNG to reseed from the pool now; False when not possible (ignored)."""
    try:
        fd = os.open(device, os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.ioctl(fd, RNDRESEEDCRNG)
        return True
    except OSError:  # EPERM without CAP_SYS_ADMIN, ENODATA before the CRNG is ready
        return False
    finally:
        os.close(fd)


def kmsg(device: str, line: str, level: int = KMSG_LEVEL) -> None:
    """Write one line to the kernel log (/dev/kmsg); raise OSError."""
    text = line.replace("\n", " ")[:KMSG_MAX]
    record = f"<{level}>{text}\n".encode("utf-8", "replace")
    fd = os.open(device, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        os.write(fd, record)
    finally:
        os.close(fd)

