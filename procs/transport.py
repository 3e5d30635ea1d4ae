"""The transport process: the engine's only door to the network.

At this stage it serves `/health` on the transport port; the Twilio webhook and
Media Streams WebSocket arrive in a later issue. It runs one asyncio loop: no
model call, file write or blocking wait ever happens on it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from pathlib import Path

import msgspec
from aiohttp import web

from engine.config import Config
from engine.health import build_health
from ipc.bus import AsyncBus
from ipc.pool import RingPool
from ipc.schema import Heartbeat, Ready, RunInfo, Shutdown, Status
from procs.child import bootstrap, watch_parent

log = logging.getLogger("engine.transport")


class TransportProc:
    proc = "transport"

    def __init__(self, cfg: Config, run: RunInfo) -> None:
        self.cfg = cfg
        self.run = run
        self.pool = RingPool.attach(run.pool_name)
        self.bus: AsyncBus | None = None
        self.status: Status | None = None
        self.status_at = 0.0
        self.stopping = asyncio.Event()

    async def health(self, request: web.Request) -> web.Response:
        assert self.bus is not None
        age = None if self.status is None else time.monotonic() - self.status_at
        code, body = build_health(
            self.status, age, 4 * self.cfg.supervisor.heartbeat_interval_s,
            self.pool.leases(),
            [r.stats() for r in self.pool.inbound], [r.stats() for r in self.pool.outbound],
            {"dropped_sends": self.bus.dropped_sends, "bad_messages": self.bus.bad_messages},
        )
        return web.Response(status=code, body=msgspec.json.encode(body), content_type="application/json")

    async def bus_loop(self) -> None:
        assert self.bus is not None
        while True:
            msg = await self.bus.recv()
            if isinstance(msg, Status):
                self.status, self.status_at = msg, time.monotonic()
            elif isinstance(msg, Shutdown):
                log.info("shutdown requested: %s", msg.reason)
                self.stopping.set()

    async def heartbeat_loop(self) -> None:
        assert self.bus is not None
        while True:
            self.bus.send("supervisor", Heartbeat(proc="transport", pid=os.getpid(),
                                                  incarnation=self.run.incarnation,
                                                  stats={"calls": len(self.pool.leases())}))
            await asyncio.sleep(self.cfg.supervisor.heartbeat_interval_s)

    def _stop_from_thread(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.call_soon_threadsafe(self.stopping.set)

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        watch_parent(self.run, lambda: self._stop_from_thread(loop))
        self.bus = AsyncBus(Path(self.run.runtime_dir), "transport")
        app = web.Application()
        app.router.add_get("/health", self.health)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.cfg.transport.host, self.cfg.transport.port, reuse_address=True)
            await site.start()
            self.bus.send("supervisor", Ready(proc="transport", pid=os.getpid(), incarnation=self.run.incarnation))
            log.info("ready: listening on http://%s:%d", self.cfg.transport.host, self.cfg.transport.port)
            if "transport" in self.cfg.faults.hang_after_ready:
                log.error("faults.hang_after_ready lists 'transport': hanging on purpose")
                threading.Event().wait()
            tasks = [asyncio.create_task(self.bus_loop()), asyncio.create_task(self.heartbeat_loop())]
            await self.stopping.wait()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await runner.cleanup()
            self.bus.close()
            self.pool.close()
            log.info("exited cleanly")


def main(cfg_bytes: bytes, run_bytes: bytes) -> None:
    cfg, run = bootstrap("transport", cfg_bytes, run_bytes)
    asyncio.run(TransportProc(cfg, run).main())
