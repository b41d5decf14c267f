"""Runs `seedtool serve` in the foreground: the core, the EGD listeners, the control socket.

Order of start: every socket is bound first (so "already in use" and a bad group are
reported before a USB device is opened, which another daemon may be holding), then the
core starts (start-up health tests, first reseed), then the listeners accept. SIGTERM
and SIGINT stop cleanly (connections closed, socket files removed, core stopped);
SIGHUP reopens the hardware sources (`EntropyCore.reopen`) and reloads the HTTPS
listener's certificate and key. Logs go to `log`, never a byte of output.

With `--https` the daemon also serves the seed API (`seedtool.serve.https`): its
socket is bound with the others, the ledger is opened, the signing key loaded and the
identity checks constructed before the core starts, so a bad option fails first.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .control import ControlServer
from .egd import DEFAULT_MAX_CLIENTS, DEFAULT_RATE, EgdServer, ListenSpec
from .log import EventLog


@dataclass(frozen=True)
class ServeConfig:
    egd: tuple[ListenSpec, ...]
    sources: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    control: str | None = None
    rate: float = DEFAULT_RATE
    max_clients: int = DEFAULT_MAX_CLIENTS
    https: str | None = None  # HOST:PORT[,rate=R,burst=B]
    cert: str | None = None
    key: str | None = None
    identities: tuple[str, ...] = ()
    ledger: str | None = None  # None: sqlite under the state directory
    issue_limit: int = 3
    signing_key: str | None = None


def run(config: ServeConfig, log: EventLog) -> None:
    """Serve until SIGTERM/SIGINT; a SeedtoolError (one sentence) if it cannot start."""
    from .core import EntropyCore

    core = EntropyCore(config.sources, config.required, log=log)
    asyncio.run(_main(config, core, log))


async def _main(config: ServeConfig, core: Any, log: EventLog) -> None:
    loop = asyncio.get_running_loop()
    started = time.time()
    egd = EgdServer(core, log, rate=config.rate, max_clients=config.max_clients)
    control = ControlServer(config.control, lambda: status()) if config.control else None
    stop = asyncio.Event()
    https = _https(config, core, log) if config.https else None

    def status() -> dict[str, Any]:
        return {"pid": os.getpid(), "uptime_s": round(time.time() - started, 1),
                "core": core.status(), **egd.status(), "serving": core.serving}

    def on_stop(signame: str) -> None:
        log("signal", {"signal": signame, "action": "stop"})
        stop.set()

    def on_hup() -> None:
        log("signal", {"signal": "SIGHUP", "action": "reopen sources"})
        loop.run_in_executor(None, core.reopen)
        if https is not None:
            https.reload()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop, sig.name)
    loop.add_signal_handler(signal.SIGHUP, on_hup)

    socks: list[socket.socket] = []
    core_started = False
    try:
        for spec in config.egd:
            sock = EgdServer.bind(spec)
            socks.append(sock)
            await egd.add(spec, sock)
        if https is not None:
            socks.append(https.bind())
        if control is not None:
            await control.start(control.bind())
        start = loop.run_in_executor(None, core.start)
        waiter = asyncio.ensure_future(stop.wait())
        await asyncio.wait({start, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if not start.done():
            waiter.cancel()
            await asyncio.gather(start, return_exceptions=True)  # start-up tests run out
            core_started = True
            return
        waiter.cancel()
        start.result()  # a required source unusable: its SeedtoolError
        core_started = True
        await egd.start_serving()
        if https is not None:
            await https.start()
        if control is not None:
            log("control", {"socket": config.control})
        await stop.wait()
    finally:
        await egd.close()
        if https is not None:
            await https.close()
            https.app.ledger.close()
        if control is not None:
            await control.close()
        for sock in socks:
            sock.close()
        if core_started:
            await loop.run_in_executor(None, core.stop)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)


def _https(config: ServeConfig, core: Any, log: EventLog) -> Any:
    """The HTTPS listener (not yet bound): ledger, signing key, identity checks, TLS pair."""
    from ..keys import load_private_key
    from ..shared.errors import UsageError
    from .https import HttpsServer, RateLimiter, SeedApp, parse_https_spec
    from .issuer import Issuer, build_checks
    from .ledger import open_ledger

    spec = parse_https_spec(config.https or "")
    if not (config.cert and config.key):
        raise UsageError("--https needs --cert FILE and --key FILE (PEM)")
    if not config.signing_key:
        raise UsageError("--https needs --signing-key FILE, the Ed25519 key envelopes are "
                         "signed with (make one with `seedtool keygen`)")
    if not config.identities:
        raise UsageError("--https needs at least one --identity (aws-iid, gce-iit, token)")
    private_key = load_private_key(config.signing_key)
    ledger = open_ledger(config.ledger, default_path=default_ledger_path())
    try:
        checks = build_checks(config.identities, ledger=ledger)
        issuer = Issuer(core=core, ledger=ledger, checks=checks, private_key=private_key,
                        limit=config.issue_limit)
        app = SeedApp(issuer, core=core, ledger=ledger, log=log,
                      limiter=RateLimiter(spec.rate, spec.burst))
        return HttpsServer(app, spec, config.cert, config.key, log)
    except BaseException:
        ledger.close()
        raise


def default_ledger_path() -> str:
    """/var/lib/seedtool/ledger.sqlite as root, else $XDG_STATE_HOME/seedtool/ledger.sqlite."""
    if os.geteuid() == 0:
        base = "/var/lib/seedtool"
    else:
        state = os.environ.get("XDG_STATE_HOME") or os.path.join(
            os.path.expanduser("~"), ".local", "state")
        base = os.path.join(state, "seedtool")
    os.makedirs(base, mode=0o700, exist_ok=True)
    return os.path.join(base, "ledger.sqlite")


def listen_specs(texts: Sequence[str]) -> tuple[ListenSpec, ...]:
    from .egd import parse_listen_spec

    return tuple(parse_listen_spec(t) for t in texts)
