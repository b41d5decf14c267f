"""The local launcher: boot VMs under QEMU, each with its own fresh seed.

Per VM: one `SeedFactory.new()`, its own NoCloud `cidata` ISO holding the user's
user-data plus that seed, and a qcow2 copy-on-write overlay on the shared base disk,
so the base image is never written. The launcher watches each VM's serial console for
the guest's kmsg line (`seedtool: credited ...` / `seedtool: mixed seed ...`) and for
cloud-init's SSH host key fingerprint block, and reports those per VM.

Acceleration: KVM when /dev/kvm is usable, else TCG. Some hosts expose a PVM shim as
/dev/kvm (module `kvm_pvm`) on which a stock Debian kernel does not boot (measured on
this project's CI machines), so that case counts as "no KVM".

This module never prints; progress goes to an optional callback. The seed exists on
the host only inside the VM's ISO, which is written 0600 and deleted as soon as the
VM has reported (QEMU keeps its open file).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..shared.errors import CloudError, SeedtoolError, UsageError
from .base import FAILED, LAUNCHED, InstanceResult, Launcher, LaunchReport, new_launch_id

QEMU = "qemu-system-x86_64"
QEMU_IMG = "qemu-img"
APT_HINT = {QEMU: "qemu-system-x86", QEMU_IMG: "qemu-utils"}
DEFAULT_APPEND = "root=/dev/vda rw console=ttyS0"
DEFAULT_TIMEOUT = 900.0
SERIAL_TAIL = 25


#: every QEMU process started here and not yet reaped, so that an interrupted caller
#: (a test session, Ctrl-C) can kill them: QEMU runs in its own session and would
#: otherwise outlive us
_LIVE: set[QemuVM] = set()
_LIVE_LOCK = threading.Lock()


def live_vms() -> list[QemuVM]:
    with _LIVE_LOCK:
        return list(_LIVE)


def kill_all() -> int:
    """Kill every VM started by this process that is still running; how many were."""
    vms = live_vms()
    for vm in vms:
        vm.kill()
    return len(vms)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """In the main thread, turn SIGTERM into KeyboardInterrupt, so cleanup runs."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class QemuError(CloudError):
    """QEMU is missing, refused to start, or a VM failed to boot."""


class BootTimeout(QemuError):
    """A VM did not reach the expected point in time; the message holds its last serial lines."""


# --- what the guest prints -----------------------------------------------------------

_KTIME = r"(?:\[\s*(?P<t>\d+\.\d+)\]\s*)?"
_CREDITED = re.compile(
    # a datasource's own seed has no id and no key: "from seed - signed by key -"
    _KTIME + r"seedtool: credited (?P<bits>\d+) bits from seed (?P<seed>[0-9a-f]+|-) signed by "
    r"key (?P<key>[0-9a-f]+|-) \((?P<origin>[^,]+), crng (?P<before>\S+)->(?P<after>[^)\s]+)\)"
)
_MIXED = re.compile(
    _KTIME + r"seedtool: mixed seed (?P<seed>[0-9a-f]+|-) uncredited \((?P<origin>[^)]*)\): "
    r"(?P<reason>.*?)\s*$"
)
_CRNG_DONE = re.compile(r"\[\s*(?P<t>\d+\.\d+)\]\s*random: crng init done")
_FP_BEGIN = "-----BEGIN SSH HOST KEY FINGERPRINTS-----"
_FP_END = "-----END SSH HOST KEY FINGERPRINTS-----"
_FP_LINE = re.compile(r"(?P<bits>\d+) (?P<fp>SHA256:[A-Za-z0-9+/=]+) .*\((?P<type>[A-Z0-9-]+)\)")


@dataclass(frozen=True)
class SeedtoolLine:
    """One of the guest's kmsg lines, as seen on the console."""

    credited: bool
    seed_id: str  # "-" when the seed could not even be parsed
    origin: str
    bits: int = 0
    key_id: str = ""
    crng_before: str = ""
    crng_after: str = ""
    reason: str = ""
    kernel_time: float | None = None


@dataclass(frozen=True)
class HostKey:
    type: str
    bits: int
    fingerprint: str


def clean_console(text: str) -> str:
    """Console text without carriage returns and terminal escape sequences."""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1bc", "", text)
    return text.replace("\r", "")


def seedtool_lines(console: str) -> list[SeedtoolLine]:
    out: list[SeedtoolLine] = []
    for line in clean_console(console).splitlines():
        m = _CREDITED.search(line)
        if m:
            out.append(SeedtoolLine(
                True, m["seed"], m["origin"], int(m["bits"]), m["key"], m["before"], m["after"],
                kernel_time=float(m["t"]) if m["t"] else None,
            ))
            continue
        m = _MIXED.search(line)
        if m:
            out.append(SeedtoolLine(
                False, m["seed"], m["origin"], reason=m["reason"],
                kernel_time=float(m["t"]) if m["t"] else None,
            ))
    return out


def crng_init_time(console: str) -> float | None:
    """Kernel time of `random: crng init done`, if it was printed."""
    m = _CRNG_DONE.search(clean_console(console))
    return float(m["t"]) if m else None


def host_keys(console: str) -> list[HostKey] | None:
    """cloud-init's host key fingerprints block (keys_to_console), or None if not yet seen."""
    text = clean_console(console)
    start = text.rfind(_FP_BEGIN)
    if start < 0:
        return None
    end = text.find(_FP_END, start)
    if end < 0:
        return None
    keys = []
    for line in text[start + len(_FP_BEGIN) : end].splitlines():
        m = _FP_LINE.search(line)
        if m:
            keys.append(HostKey(m["type"], int(m["bits"]), m["fp"]))
    return keys


# --- host tools ------------------------------------------------------------------------


def find_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise QemuError(
            f"{name} is not installed; install it with 'apt-get install {APT_HINT.get(name, name)}'"
        )
    return path


def kvm_usable() -> bool:
    """True if /dev/kvm is there, ours to open, and not the PVM shim stock kernels fail on."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    return not os.path.exists("/sys/module/kvm_pvm")


def choose_accel(requested: str = "auto") -> str:
    if requested not in ("auto", "kvm", "tcg"):
        raise UsageError(f"--accel must be auto, kvm or tcg, not {requested!r}")
    if requested == "auto":
        return "kvm" if kvm_usable() else "tcg"
    return requested


def image_format(path: Path) -> str:
    """The disk image's format as qemu-img sees it (raw, qcow2, ...)."""
    if not path.is_file():
        raise UsageError(f"disk image {path} does not exist; build or download one first")
    out = subprocess.run(
        [find_tool(QEMU_IMG), "info", "--output=json", str(path)],
        capture_output=True, text=True, check=False,
    )
    if out.returncode != 0:
        raise QemuError(f"qemu-img cannot read {path}: {_last_line(out.stderr)}")
    try:
        return str(json.loads(out.stdout)["format"])
    except (ValueError, KeyError):
        raise QemuError(f"qemu-img gave no format for {path}; is it a disk image?") from None


def create_overlay(base: Path, overlay: Path, base_format: str | None = None) -> None:
    """A qcow2 overlay on `base`: the VM writes there, `base` stays untouched."""
    fmt = base_format or image_format(base)
    out = subprocess.run(
        [find_tool(QEMU_IMG), "create", "-q", "-f", "qcow2", "-b", str(base.resolve()),
         "-F", fmt, str(overlay)],
        capture_output=True, text=True, check=False,
    )
    if out.returncode != 0:
        raise QemuError(f"cannot create an overlay on {base}: {_last_line(out.stderr)}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


# --- virtio-rng: where the guest's hardware RNG gets its bytes ------------------------

#: the guest may pull at most RNG_MAX_BYTES per RNG_PERIOD_MS (virtio-rng-pci `max-bytes`,
#: `period`, hw/virtio/virtio-rng.c): Linux needs 32 bytes credited at full quality for
#: `crng init done` (drivers/char/random.c, 256 bits), and after that its hwrng thread
#: asks only once per reseed interval (add_hwgenerator_randomness), so 1 KiB a second is
#: ample for a guest and bounds what one VM can take from a shared host daemon
RNG_MAX_BYTES = 1024
RNG_PERIOD_MS = 1000
#: seconds between QEMU's attempts to reconnect to a vanished EGD socket
RNG_RECONNECT_S = 1
#: sun_path is 108 bytes on Linux, NUL included (include/uapi/linux/un.h)
_SUN_PATH_MAX = 107


@dataclass(frozen=True)
class RngBackend:
    """What feeds the guest's virtio-rng device, from `--rng`.

    `none`: no virtio-rng device (the launcher's behaviour before --rng existed);
    `urandom`: QEMU's `rng-random` backend on the host's /dev/urandom;
    `egd:PATH`: QEMU's `rng-egd` backend on a UNIX socket chardev to an EGD daemon
    such as `seedtool serve --egd unix:PATH`, reconnecting when the daemon restarts.
    Optional `,max-bytes=N,period=MS,reconnect=S` follow the spec.
    """

    kind: str  # none | urandom | egd
    path: str = ""
    max_bytes: int = RNG_MAX_BYTES
    period_ms: int = RNG_PERIOD_MS
    reconnect_s: int = RNG_RECONNECT_S

    def check(self) -> None:
        """An EGD socket must be there at launch; later QEMU reconnects by itself."""
        if not os.path.exists(self.path):
            raise UsageError(f"there is no EGD socket at {self.path}; start the daemon first "
                             f"(seedtool serve --egd unix:{self.path})")
        if not stat.S_ISSOCK(os.stat(self.path).st_mode):
            raise UsageError(f"{self.path} is not a UNIX socket; --rng egd:PATH needs the "
                             "socket an EGD daemon listens on")

    def qemu_args(self, reconnect_option: str = "reconnect") -> list[str]:
        """QEMU arguments for this backend; `reconnect_option` is the chardev's spelling."""
        if self.kind == "none":
            return []
        rate = f"max-bytes={self.max_bytes},period={self.period_ms}"
        if self.kind == "urandom":
            return ["-object", "rng-random,id=rng0,filename=/dev/urandom",
                    "-device", f"virtio-rng-pci,rng=rng0,{rate}"]
        every = self.reconnect_s * 1000 if reconnect_option == "reconnect-ms" else self.reconnect_s
        return ["-chardev", f"socket,id=egd0,path={self.path},{reconnect_option}={every}",
                "-object", "rng-egd,id=rng0,chardev=egd0",
                "-device", f"virtio-rng-pci,rng=rng0,{rate}"]


_RNG_LIMITS = {"max-bytes": (1, 1 << 30), "period": (1, 3_600_000), "reconnect": (1, 3600)}


def parse_rng(spec: str) -> RngBackend:
    """`none`, `urandom` or `egd:PATH[,max-bytes=N][,period=MS][,reconnect=S]`."""
    head, *opts = spec.split(",")
    kind, sep, path = head.partition(":")
    if kind in ("none", "urandom") and not sep:
        if kind == "none" and opts:
            raise UsageError("--rng none takes no options")
        backend = RngBackend(kind)
    elif kind == "egd" and sep:
        if not path:
            raise UsageError("--rng egd:PATH needs the path of the EGD daemon's UNIX socket")
        path = os.path.abspath(path)  # QEMU resolves a relative path against its own cwd
        if len(os.fsencode(path)) > _SUN_PATH_MAX:
            raise UsageError(f"--rng egd: the socket path {path} is longer than a UNIX "
                             f"socket allows ({_SUN_PATH_MAX} bytes); use a shorter one")
        backend = RngBackend("egd", path)
    else:
        raise UsageError(f"--rng must be none, urandom or egd:PATH, not {spec!r}")
    values: dict[str, int] = {}
    for opt in opts:
        key, eq, value = opt.partition("=")
        if key not in _RNG_LIMITS or not eq:
            raise UsageError(f"--rng option {opt!r} is not one of max-bytes=N, period=MS, "
                             "reconnect=S (and a socket path cannot contain a comma)")
        if key == "reconnect" and kind != "egd":
            raise UsageError("--rng reconnect=S applies only to egd:PATH")
        lo, hi = _RNG_LIMITS[key]
        try:
            n = int(value)
        except ValueError:
            n = lo - 1
        if not lo <= n <= hi:
            raise UsageError(f"--rng {key} must be a whole number from {lo} to {hi}, "
                             f"not {value!r}")
        values[key] = n
    return RngBackend(
        backend.kind, backend.path, values.get("max-bytes", RNG_MAX_BYTES),
        values.get("period", RNG_PERIOD_MS), values.get("reconnect", RNG_RECONNECT_S),
    )


_reconnect_spelling: dict[str, str] = {}


def reconnect_option(qemu: str) -> str:
    """`reconnect-ms` where this QEMU has it (9.2 added it and deprecated the seconds
    option `reconnect`, qapi/char.json), else `reconnect`; asked once per binary."""
    if qemu not in _reconnect_spelling:
        out = subprocess.run([qemu, "-chardev", "socket,help"], capture_output=True,
                             text=True, check=False)
        _reconnect_spelling[qemu] = (
            "reconnect-ms" if "reconnect-ms=" in out.stdout + out.stderr else "reconnect")
    return _reconnect_spelling[qemu]


# --- one VM ----------------------------------------------------------------------------


@dataclass
class MachineConfig:
    """How to boot: shared by every VM of one launch."""

    image: Path
    kernel: Path | None = None
    initrd: Path | None = None
    append: str | None = None
    memory: int = 1024  # MiB
    cpu: str | None = None  # default: host under KVM, max under TCG
    accel: str = "auto"
    #: True: virtio-rng from the host's /dev/urandom (the same as rng=RngBackend("urandom"))
    virtio_rng: bool = False
    #: what feeds virtio-rng (parse_rng); None: as `virtio_rng` says
    rng: RngBackend | None = None
    network: bool = True
    #: isolate the guest from the outside (hostfwd to sshd still works)
    restrict_network: bool = False
    extra_args: Sequence[str] = ()

    def check(self) -> None:
        if not self.image.is_file():
            raise UsageError(f"disk image {self.image} does not exist; build or download one first")
        for what, p in (("kernel", self.kernel), ("initrd", self.initrd)):
            if p is not None and not p.is_file():
                raise UsageError(f"{what} {p} does not exist")
        if self.initrd is not None and self.kernel is None:
            raise UsageError("--initrd needs --kernel")
        if self.append is not None and self.kernel is None:
            raise UsageError("--append needs --kernel (without it the image's boot loader decides)")
        if not 256 <= self.memory <= 1 << 20:
            raise UsageError("--memory is in MiB and must be at least 256")
        if self.rng is not None and self.rng.kind == "egd":
            self.rng.check()


class QemuVM:
    """One QEMU process with a serial log file, a QMP socket and optional hostfwd to ssh."""

    def __init__(self, name: str, workdir: Path, disk: Path, config: MachineConfig,
                 seed_iso: Path | None = None, disk_format: str = "qcow2",
                 ssh_port: int | None = None) -> None:
        self.name = name
        self.workdir = workdir
        self.disk = disk
        self.disk_format = disk_format
        self.config = config
        self.seed_iso = seed_iso
        self.ssh_port = ssh_port
        self.serial_log = workdir / "serial.log"
        self.qmp_path = workdir / "qmp.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.accel = ""
        self.started_at = 0.0
        self._stderr = workdir / "qemu.stderr"

    def argv(self) -> list[str]:
        c = self.config
        self.accel = choose_accel(c.accel)
        cpu = c.cpu or ("host" if self.accel == "kvm" else "max")
        accel = "kvm" if self.accel == "kvm" else "tcg,thread=multi"
        args = [
            find_tool(QEMU), "-name", self.name, "-machine", "pc", "-accel", accel,
            "-cpu", cpu, "-smp", "1", "-m", str(c.memory),
            "-display", "none", "-vga", "none", "-nodefaults",
            "-serial", f"file:{self.serial_log}",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-drive", f"file={self.disk},if=virtio,format={self.disk_format},cache=unsafe",
        ]
        if self.seed_iso is not None:
            args += ["-drive", f"file={self.seed_iso},if=virtio,format=raw,readonly=on"]
        if c.kernel is not None:
            args += ["-kernel", str(c.kernel)]
            if c.initrd is not None:
                args += ["-initrd", str(c.initrd)]
            args += ["-append", c.append or DEFAULT_APPEND]
        if c.network:
            net = "user,id=net0"
            if c.restrict_network:
                net += ",restrict=on"
            if self.ssh_port is not None:
                net += f",hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22"
            args += ["-netdev", net, "-device", "virtio-net-pci,netdev=net0"]
        rng = c.rng or RngBackend("urandom" if c.virtio_rng else "none")
        args += rng.qemu_args(reconnect_option(args[0]) if rng.kind == "egd" else "reconnect")
        return args + list(c.extra_args)

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.serial_log.write_bytes(b"")
        with open(self._stderr, "wb") as err:
            self.proc = subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                start_new_session=True,  # --keep-running VMs outlive us; ^C reaches only us
            )
        with _LIVE_LOCK:
            _LIVE.add(self)
        self.started_at = time.monotonic()
        (self.workdir / "qemu.pid").write_text(f"{self.proc.pid}\n")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def console(self) -> str:
        try:
            return self.serial_log.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def tail(self, n: int = SERIAL_TAIL) -> str:
        lines = [ln for ln in clean_console(self.console()).splitlines() if ln.strip()]
        return "\n".join(lines[-n:])

    def exited(self) -> int | None:
        rc = None if self.proc is None else self.proc.poll()
        if rc is not None:
            self._forget()
        return rc

    def _forget(self) -> None:
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def _died(self) -> QemuError:
        err = ""
        try:
            err = _last_line(self._stderr.read_text(errors="replace"))
        except OSError:
            pass
        return QemuError(
            f"{self.name}: QEMU exited with status {self.exited()} ({err}); last serial lines:\n"
            f"{self.tail()}"
        )

    def wait_until(self, done: Callable[[str], bool], timeout: float, what: str,
                   allow_exit: bool = False) -> str:
        """Poll the console until `done(console)`; raise BootTimeout with the serial tail."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.console()
            if done(text):
                return text
            if self.exited() is not None:
                text = self.console()
                if done(text):
                    return text
                if not allow_exit:
                    raise self._died()
                raise QemuError(
                    f"{self.name}: the VM stopped before {what}; last serial lines:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise BootTimeout(
                    f"{self.name}: no {what} within {timeout:.0f} s; last serial lines:\n"
                    f"{self.tail()}"
                )
            time.sleep(0.5)

    def wait_exit(self, timeout: float) -> int:
        """Wait for the guest to power itself off; on timeout kill it and raise."""
        assert self.proc is not None
        try:
            rc = self.proc.wait(timeout)
            self._forget()
            return rc
        except subprocess.TimeoutExpired:
            self.kill()
            raise BootTimeout(
                f"{self.name}: the VM did not power off within {timeout:.0f} s; last serial "
                f"lines:\n{self.tail()}"
            ) from None

    def qmp(self, command: str) -> None:
        """Send one QMP command (no arguments) and read its answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(self.qmp_path))
            f = s.makefile("rwb")
            f.readline()  # greeting
            for cmd in ("qmp_capabilities", command):
                f.write(json.dumps({"execute": cmd}).encode() + b"\n")
                f.flush()
                while True:
                    line = f.readline()
                    if not line:
                        return
                    msg = json.loads(line)
                    if "return" in msg or "error" in msg:
                        break

    def power_off(self, grace: float = 60.0) -> None:
        """ACPI power button, then QMP quit, then SIGKILL: the VM is gone afterwards."""
        if self.proc is None or self.exited() is not None:
            return
        try:
            self.qmp("system_powerdown")
            self.proc.wait(grace)
            return
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass
        try:
            self.qmp("quit")
            self.proc.wait(10)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self._forget()


# --- a launch: N VMs, each with its own seed --------------------------------------------


@dataclass
class VMReport:
    name: str
    instance_id: str
    seed_id: str
    key_id: str
    verdict: str  # credited | uncredited | no-seedtool | failed
    credited_bits: int = 0
    reason: str = ""
    host_keys: list[HostKey] = field(default_factory=list)
    boot_seconds: float = 0.0
    accel: str = ""
    ssh_port: int | None = None
    pid: int | None = None
    workdir: str = ""
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["host_keys"] = [asdict(k) for k in self.host_keys]
        return d


ProgressFn = Callable[[str, str], None]


def _ours(lines: list[SeedtoolLine], seed_id: str) -> SeedtoolLine | None:
    """The kmsg line about our seed; failing that, a refusal that names no seed."""
    for ln in lines:
        if ln.seed_id == seed_id:
            return ln
    for ln in lines:
        if ln.seed_id == "-" and not ln.credited:
            return ln
    return None


class QemuLauncher(Launcher):
    """Boots one VM per index under the launch engine (seedtool.launch.base): `create`
    starts QEMU with the VM's own seed ISO and overlay (the "call" the probe waits
    for), `settle` watches its console until it has reported.

    At most `concurrency` VMs boot at a time (the command's --parallel, default the
    number of CPUs, since every booting TCG VM keeps one busy; with `keep_running` the
    VMs that have reported stay up, mostly idle, while the next ones boot). Without
    `keep_running` each VM is powered off once it has reported, and its overlay is
    deleted unless `workdir` was given. Local VMs cannot be resumed: `existing()` is
    empty.
    """

    name = "qemu"
    command = "seedtool.commands.launch:qemu"

    def __init__(self, config: MachineConfig, *, user_data: bytes | None = None,
                 keep_running: bool = False, workdir: Path | None = None,
                 timeout: float = DEFAULT_TIMEOUT, progress: ProgressFn | None = None) -> None:
        self.config = config
        self.user_data = user_data
        self.keep_running = keep_running
        self.workdir = workdir
        self.timeout = timeout
        self.launch_id = new_launch_id()
        self._note = progress or (lambda _vm, _msg: None)
        self._root: Path | None = None
        self._base_format = ""
        self._width = 1
        self._lock = threading.Lock()
        #: set when the launch is interrupted: no VM starts after it, every one is killed
        self._cancelled = threading.Event()
        self._vms: dict[int, QemuVM] = {}
        self._reports: dict[int, VMReport] = {}

    def check_request(self, count: int) -> list[str]:
        self.config.check()
        find_tool(QEMU)
        self._base_format = image_format(self.config.image)
        self._width = len(str(count))
        if self._root is None:
            root = self.workdir or Path(tempfile.mkdtemp(prefix="seedtool-qemu-"))
            root.mkdir(parents=True, exist_ok=True)
            self._root = root
        return []

    def existing(self) -> dict[int, InstanceResult]:
        return {}

    def vm_name(self, index: int) -> str:
        return f"vm{index + 1:0{self._width}d}"

    def create(self, index: int, user_data: bytes, seed_id: str,
               attempt: int = 0) -> InstanceResult:
        """Write the VM's seed ISO and overlay and start QEMU."""
        from ..deliver.nocloud import new_instance_id, write_iso

        assert self._root is not None, "prepare() must be called before launching"
        name = self.vm_name(index)
        vdir = self._root / name
        vdir.mkdir(parents=True, exist_ok=True)
        iid = new_instance_id()
        iso = vdir / "seed.iso"
        vm: QemuVM | None = None
        try:
            write_iso(iso, user_data, instance_id=iid)
            overlay = vdir / "disk.qcow2"
            create_overlay(self.config.image, overlay, self._base_format)
            port = free_port() if self.config.network else None
            vm = QemuVM(name, vdir, overlay, self.config, seed_iso=iso, ssh_port=port)
            with self._lock:
                if self._cancelled.is_set():
                    raise QemuError(f"{name}: not started: the launch was interrupted")
                vm.start()
                self._vms[index] = vm
        except BaseException:
            if vm is not None:
                vm.kill()
            iso.unlink(missing_ok=True)
            raise
        self._note(name, f"booting ({vm.accel}), seed {seed_id}")
        report = VMReport(name, iid, seed_id, _key_id(user_data), "failed", accel=vm.accel,
                          ssh_port=port, pid=vm.pid, workdir=str(vdir))
        self._reports[index] = report
        return InstanceResult(index, LAUNCHED, seed_id=seed_id, instance_id=name)

    def settle(self, result: InstanceResult) -> InstanceResult:
        """Watch the console for the seed's kmsg line and the host keys; power off."""
        vm = self._vms[result.index]
        report = self._reports[result.index]
        seed_id = report.seed_id
        try:
            seen: dict[str, bool] = {}

            def reported(text: str) -> bool:
                line = _ours(seedtool_lines(text), seed_id)
                if line is not None and "line" not in seen:
                    seen["line"] = True
                    self._note(vm.name, "seed credited" if line.credited
                               else f"seed refused: {line.reason}")
                return host_keys(text) is not None

            text = vm.wait_until(reported, self.timeout, "SSH host key fingerprints on the "
                                 "console")
            report.boot_seconds = round(time.monotonic() - vm.started_at, 1)
            report.host_keys = host_keys(text) or []
            line = _ours(seedtool_lines(text), seed_id)
            if line is None:
                report.verdict = "no-seedtool"
                report.reason = ("no seedtool line on the console: the image has no seedtool "
                                 "guest, so cloud-init's seed_random only mixed the seed in")
            else:
                report.verdict = "credited" if line.credited else "uncredited"
                report.credited_bits = line.bits
                report.reason = line.reason
            self._note(vm.name, f"reported after {report.boot_seconds:.0f} s")
        except SeedtoolError as e:  # one VM failing must not hide the others' reports
            vm.kill()
            report.error = str(e)
            report.pid = None
            result.status, result.error = FAILED, str(e)
            return result
        except BaseException:
            vm.kill()
            raise
        finally:
            # QEMU keeps its open file; the seed leaves our disk
            (vm.workdir / "seed.iso").unlink(missing_ok=True)
        if not self.keep_running and vm.exited() is None:
            self._note(vm.name, "powering off")
            vm.power_off()
            report.pid = None
        elif vm.exited() is not None:
            report.pid = None
        return result

    def interrupt(self) -> None:
        """Ctrl-C or SIGTERM: QEMU runs in its own session (so a --keep-running VM can
        outlive us) and never sees the signal; kill this launch's VMs here."""
        with self._lock:
            self._cancelled.set()
            vms = list(self._vms.values())
        for vm in vms:
            vm.kill()

    def close(self) -> None:
        if self.workdir is None and not self.keep_running and self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)

    def vm_reports(self, report: LaunchReport) -> list[VMReport]:
        """Each index of a launch as a VMReport (a VM that never started included)."""
        out = []
        for r in report.results:
            vm = self._reports.get(r.index)
            if vm is None:
                vm = VMReport(self.vm_name(r.index), "", r.seed_id or "", "", "failed")
            if r.error and not vm.error:
                vm.error = r.error
            if self.workdir is None and not self.keep_running:
                vm.workdir = ""
            out.append(vm)
        return out


def _key_id(user_data: bytes) -> str:
    """The signing key's id, from the envelope in the VM's user-data (public)."""
    from ..deliver.userdata import find_seed
    from ..shared import envelope

    text = find_seed(user_data)
    return envelope.parse(text).key_id_hex if text else ""
