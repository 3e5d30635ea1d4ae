"""The transport process: the engine's only door to the phone network, and the conductor of every call.

HTTP: the Twilio webhooks (`procs.webhooks`) and /health. WebSocket: one Twilio
Media Stream per call, read through `procs.media_socket`; from its `start` on, each
call is a `procs.phone_call.PhoneCall`, which owns its socket loop, its send loop,
its conversation and its end. This shell holds what they share and runs the loops
every call needs: the bus (speech and TTS events to their calls, the supervisor's
status, restarts noticed from it), the tick that gives every conductor the time,
heartbeats, and the lifecycle. Everything runs on one asyncio loop; file writes go
to the recorder's and the trace sink's threads, and the outbound doorbell thread
(`procs.doorbell`) wakes a call's send loop the moment the TTS publishes audio. A
socket that misbehaves is closed with a reason; no other call notices.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
from aiohttp import web

from engine.admission import Admission, HostCpu
from engine.conductor_io import PeerRestarted, Tick
from engine.config import Config
from engine.health import build_health
from engine.media_stream import CLOSE_POLICY, MediaStreamSession, Started
from engine.telephony import STREAM_PATH, TOKEN_PARAMETER, StreamTokens
from engine.trace import TraceSink
from ipc.bus import AsyncBus
from ipc.pool import RingPool
from ipc.schema import (
    EndOfTurn,
    Heartbeat,
    Ready,
    RunInfo,
    Shutdown,
    SpeechResumed,
    SpeechStarted,
    SpeechSustained,
    Spoken,
    Status,
    Transcript,
)
from procs.child import bootstrap, watch_parent
from procs.doorbell import OutboundDoorbell
from procs.media_socket import MediaSocket, StreamEvent
from procs.phone_call import PhoneCall, TransportShared, recordings_of
from procs.webhooks import Webhooks

log = logging.getLogger("engine.transport")

CLOSE_TRY_AGAIN = 1013


class TransportProc:
    """The transport process: its HTTP app, its shared loops, and its lifecycle."""

    proc = "transport"

    def __init__(self, cfg: Config, run: RunInfo) -> None:
        self.cfg = cfg
        self.run = run
        self.pool = RingPool.attach(run.pool_name)
        self.bus = AsyncBus(Path(run.runtime_dir), "transport")
        doorbell = OutboundDoorbell(self.pool.doorbells["outbound"], cfg.ring.spin_us * 1e-6)
        self.shared = TransportShared(cfg, self.bus, self.pool, doorbell, recordings_of(cfg),
                                      TraceSink.open(cfg.engine.trace_file),
                                      admission=Admission(cfg.engine.max_calls, cfg.engine.admit_max_response_ms,
                                                          cfg.engine.admit_max_cpu_pct))
        self.host_cpu = HostCpu()
        self.tokens = StreamTokens(cfg.transport.stream_secret.encode(), cfg.transport.stream_token_ttl_s)
        self.webhooks = Webhooks(cfg, self.pool, self.tokens, self.shared.counters, self.shared.recorder,
                                 self.shared.admission)
        self.status: Status | None = None
        self.status_at = 0.0
        self.stopping = asyncio.Event()
        self.incarnations: dict[str, int] = {}  # each peer's last seen incarnation, to notice restarts

    # --- HTTP ----------------------------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        shared = self.shared
        age = None if self.status is None else time.monotonic_ns() / 1e9 - self.status_at
        code, body = build_health(
            self.status, age, 4 * self.cfg.supervisor.heartbeat_interval_s, self.pool.leases(),
            [r.stats() for r in self.pool.inbound], [r.stats() for r in self.pool.outbound],
            {"dropped_sends": self.bus.dropped_sends, "bad_messages": self.bus.bad_messages},
        )
        body["admission"] = shared.admission.health(len(self.pool.leases()))
        body["transport"] = {
            "counters": dict(shared.counters),
            "inbound_frame_us": shared.inbound_us.summary(),
            "outbound_frame_us": shared.outbound_us.summary(),
            "calls": {call_id: call.live_summary() for call_id, call in shared.calls.items()},
            "ended": list(shared.ended),
        }
        return web.Response(status=code, body=msgspec.json.encode(body), content_type="application/json")

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """A Media Stream: refused unless signed; read up to its `start`, which makes it a call."""
        if self.cfg.transport.validate_signatures and not self.webhooks.upgrade_signed(request):
            log.warning("refused media stream upgrade from %s: bad or missing X-Twilio-Signature", request.remote)
            self.shared.counters["streams_refused_signature"] += 1
            return web.Response(status=403, text="invalid signature\n")
        ws = web.WebSocketResponse(max_msg_size=self.cfg.transport.max_message_bytes, autoping=True)
        await ws.prepare(request)
        socket = MediaSocket(ws, MediaStreamSession(self._verify_token), self.cfg.transport.stream_idle_timeout_s,
                             self.shared.counters, request.remote)
        events = socket.events()
        try:
            async for _, event in events:
                if isinstance(event, Started):  # the rest of the socket is the call's
                    await self._start_call(socket, event, events)
                    break
        finally:
            if not ws.closed:
                await ws.close()
        return ws

    async def _start_call(self, socket: MediaSocket, started: Started,
                          events: AsyncIterator[tuple[int, StreamEvent]]) -> None:
        call_id = started.call_sid
        lease = None if call_id in self.shared.calls else self.pool.lease(call_id)
        if lease is None:
            await self._refuse(socket, call_id)
            return
        self.shared.counters["calls_started"] += 1
        await PhoneCall(self.shared, lease, socket, started).run(events)

    def _verify_token(self, params: dict[str, str], call_sid: str) -> str | None:
        token = params.get(TOKEN_PARAMETER)
        if token is None:
            return "stream token missing from customParameters"
        return self.tokens.verify(token, call_sid)

    async def _refuse(self, socket: MediaSocket, call_id: str) -> None:
        if call_id in self.shared.calls:
            log.warning("second stream for call %s refused", call_id)
            code, reason = CLOSE_POLICY, "call already streaming"
        else:
            log.warning("stream for call %s refused: all %d ring pairs in use", call_id, self.pool.max_calls)
            self.shared.counters["calls_refused_capacity"] += 1
            code, reason = CLOSE_TRY_AGAIN, "engine at capacity"
        socket.outcome = f"refused: {reason}"
        await socket.close(code, reason)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.cfg.transport.max_message_bytes)
        app.router.add_get("/health", self.health)
        self.webhooks.add_routes(app)
        app.router.add_get(STREAM_PATH, self.stream)
        return app

    # --- the loops every call shares ---------------------------------------------------------
    async def bus_loop(self) -> None:
        while True:
            msg = await self.bus.recv()
            if isinstance(msg, Status):
                # Fresh by when it was sent, not received: after a restart, stale ones may be queued.
                if self.status is None or msg.t_ns >= self.status.t_ns:
                    self.status, self.status_at = msg, msg.t_ns / 1e9
                    await self._notice_restarts(msg)
            elif isinstance(msg, Shutdown):
                log.info("shutdown requested: %s", msg.reason)
                self.stopping.set()
            elif isinstance(msg, SpeechStarted | SpeechSustained | EndOfTurn | Transcript | SpeechResumed | Spoken):
                call = self.shared.calls.get(msg.call_id)
                if call is not None:
                    await call.on_bus(msg)

    async def _notice_restarts(self, status: Status) -> None:
        """A peer that came back as a new incarnation lost its calls' work in flight: tell every call."""
        for proc in status.procs:
            if proc.state != "ready" or proc.name == "transport":
                continue
            seen = self.incarnations.get(proc.name)
            self.incarnations[proc.name] = proc.incarnation
            if seen is not None and proc.incarnation > seen:
                log.warning("%s restarted (incarnation %d): telling %d calls", proc.name, proc.incarnation,
                            len(self.shared.calls))
                for call in list(self.shared.calls.values()):
                    await call.feed(PeerRestarted(proc.name))

    async def tick_loop(self) -> None:
        """Give every conductor the time: re-prompts, keypad timeouts, reply timeouts, the call time limit."""
        while True:
            await asyncio.sleep(self.cfg.conversation.tick_s)
            for call in list(self.shared.calls.values()):
                await call.feed(Tick())

    async def heartbeat_loop(self) -> None:
        while True:
            if (busy := self.host_cpu.sample()) is not None:  # a CPU sample per heartbeat, for admission
                self.shared.admission.cpu(busy, time.monotonic())
            self.bus.send("supervisor", Heartbeat(proc="transport", pid=os.getpid(), incarnation=self.run.incarnation,
                                                  stats={"calls": len(self.shared.calls)}))
            await asyncio.sleep(self.cfg.supervisor.heartbeat_interval_s)

    # --- lifecycle ----------------------------------------------------------------------------
    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        def stop_from_thread() -> None:
            loop.call_soon_threadsafe(self.stopping.set)

        watch_parent(self.run, stop_from_thread)
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.cfg.transport.host, self.cfg.transport.port, reuse_address=True)
            await site.start()
            self.shared.doorbell.start(loop)
            self.bus.send("supervisor", Ready(proc="transport", pid=os.getpid(), incarnation=self.run.incarnation))
            log.info("ready: listening on http://%s:%d", self.cfg.transport.host, self.cfg.transport.port)
            if "transport" in self.cfg.faults.hang_after_ready:
                log.error("faults.hang_after_ready lists 'transport': hanging on purpose")
                threading.Event().wait()
            tasks = [asyncio.create_task(loop_()) for loop_ in (self.bus_loop, self.heartbeat_loop, self.tick_loop)]
            await self.stopping.wait()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for call in list(self.shared.calls.values()):
                with contextlib.suppress(Exception):
                    await call.socket.close(1001, "engine shutting down")
            await runner.cleanup()
            self._close()

    def _close(self) -> None:
        """The doorbell thread, the recorder's and trace sink's threads, the bus and the rings."""
        self.shared.doorbell.stop()
        if self.shared.recorder is not None:
            self.shared.recorder.stop()
        if self.shared.trace is not None:
            self.shared.trace.close()
        self.bus.close()
        self.pool.close()
        log.info("exited cleanly")


async def _serve(cfg: Config, run: RunInfo) -> None:
    await TransportProc(cfg, run).main()  # made on the loop: its bus's sockets belong to it


def main(cfg_bytes: bytes, run_bytes: bytes) -> None:
    cfg, run = bootstrap("transport", cfg_bytes, run_bytes)
    asyncio.run(_serve(cfg, run))
