"""A throwaway PostgreSQL cluster for tests and benchmarks: initdb + pg_ctl, no systemd.

`throwaway_cluster()` makes a cluster in a new temporary directory, starts it
listening on a UNIX socket in that directory only (``listen_addresses=''``: no TCP
port, so nothing to collide with), and removes everything on exit. The directory
is mode 0700, so ``trust`` authentication admits only its owner (and root).

initdb refuses to run as root (PostgreSQL docs, "initdb": "must be run as the user
that will own the server process"), so under root the cluster belongs to the
``postgres`` user (Debian's package makes it), or ``nobody``, and every PostgreSQL
program runs through ``runuser -u USER --``. The programs are found on PATH, then
through ``pg_config --bindir``, then in Debian's ``/usr/lib/postgresql/N/bin``.

Run ``python -m devtools.postgres`` for a cluster that lives until Ctrl-C; it
prints its DSN.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

PORT = 5432  # only names the socket file: .s.PGSQL.5432 in the cluster's directory


def bindir() -> Path:
    """Where initdb and pg_ctl are, or RuntimeError saying what to install."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                             check=False).stdout.strip()
        if out and (Path(out) / "initdb").exists():
            return Path(out)
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                    key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                    else 0)
    if debian:
        return debian[-1].parent
    raise RuntimeError("PostgreSQL's initdb was not found: install the postgresql package")


def _owner() -> Optional[str]:
    """The user to run PostgreSQL as when we are root, else None (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise RuntimeError("initdb refuses root and there is no postgres or nobody user to run it as")


@dataclass
class Cluster:
    """A running (or stopped) throwaway cluster in `directory`."""

    directory: Path
    user: Optional[str]
    bin: Path

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def log(self) -> Path:
        return self.directory / "log"

    @property
    def dsn(self) -> str:
        """A postgresql:// URL for the superuser over the cluster's socket."""
        host = urllib.parse.quote(str(self.directory), safe="")
        return f"postgresql://postgres@{host}:{PORT}/postgres"

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin / argv[0]), *argv[1:]]
        if self.user is not None:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=self.directory,
                              check=False)
        if done.returncode != 0:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{argv[0]} failed ({done.returncode}): "
                               f"{done.stderr.strip()[-2000:]}\n{tail}")
        return done

    def start(self) -> None:
        options = f"-c listen_addresses='' -c unix_socket_directories='{self.directory}' -p {PORT}"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                  "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop: "fast" (clients disconnected cleanly) or "immediate" (like a crash)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def running(self) -> bool:
        cmd = [str(self.bin / "pg_ctl"), "-D", str(self.data), "status"]
        if self.user is not None:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, cwd=self.directory,
                              check=False).returncode == 0


@contextmanager
def throwaway_cluster() -> Iterator[Cluster]:
    """A started cluster in a fresh temporary directory, removed on exit."""
    # a short directory: the socket path must fit in sun_path (108 bytes on Linux)
    directory = Path(tempfile.mkdtemp(prefix="pg"))
    user = _owner()
    try:
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(directory, entry.pw_uid, entry.pw_gid)
        os.chmod(directory, 0o700)
        cluster = Cluster(directory, user, bindir())
        # --no-sync: a test cluster need not survive a power cut of the host
        cluster._run("initdb", "-D", str(cluster.data), "-U", "postgres", "--auth=trust",
                     "--no-sync", "-E", "UTF8", "--no-instructions")
        cluster.start()
        try:
            yield cluster
        finally:
            if cluster.running():
                cluster.stop("immediate")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    import signal

    with throwaway_cluster() as cluster:
        print(cluster.dsn, flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
