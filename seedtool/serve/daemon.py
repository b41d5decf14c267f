"""Runs `seedtool serve` in the foreground: the core, the EGD listeners, the control socket.

Order of start: every socket is bound first (so "already in use" and a bad group are
reported before a USB device is opened, which another daemon may be holding), then the
core starts (start-up health tests, first reseed), then the listeners accept. SIGTERM
and SIGINT stop cleanly (connections closed, socket files removed, core stopped);
SIGHUP reopens the hardware sources (`EntropyCore.reopen`). Logs go to `log`, never
a byte of output.
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

    def status() -> dict[str, Any]:
        return {"pid": os.getpid(), "uptime_s": round(time.time() - started, 1),
                "core": core.status(), **egd.status(), "serving": core.serving}

    def on_stop(signame: str) -> None:
        log("signal", {"signal": signame, "action": "stop"})
        stop.set()

    def on_hup() -> None:
        log("signal", {"signal": "SIGHUP", "action": "reopen sources"})
        loop.run_in_executor(None, core.reopen)

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
        if control is not None:
            log("control", {"socket": config.control})
        await stop.wait()
    finally:
        await egd.close()
        if control is not None:
            await control.close()
        for sock in socks:
            sock.close()
        if core_started:
            await loop.run_in_executor(None, core.stop)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)


def listen_specs(texts: Sequence[str]) -> tuple[ListenSpec, ...]:
    from .egd import parse_listen_spec

    return tuple(parse_listen_spec(t) for t in texts)
