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
import socket as socket_
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from engine.admission import Admission, HostCpu, Party, Reservations
from engine.conductor_io import PeerRestarted, Tick
from engine.config import Config
from engine.handoff import twilio_http
from engine.health import build_health
from engine.media_stream import CLOSE_POLICY, MediaStreamSession, Started
from engine.metrics import CallMetrics, Snapshot
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
from procs.after_call import AfterCall
from procs.child import bootstrap, watch_parent
from procs.connection_cap import ConnectionCap
from procs.doorbell import OutboundDoorbell
from procs.media_socket import MediaSocket, SocketLimits, StreamEvent
from procs.phone_call import PhoneCall
from procs.playground import Playground, Verify
from procs.transport_shared import TransportShared, bearer_is, loopback, recordings_of
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
                                                          cfg.engine.admit_max_cpu_pct),
                                      reservations=Reservations(cfg.transport.stream_token_ttl_s))
        self.shared.metrics = CallMetrics(self._snapshot)
        self.shared.after = AfterCall(cfg, self.shared.recorder, self.shared.counters)
        self.shared.twilio_http = twilio_http(cfg.twilio.api_url)
        self.host_cpu = HostCpu()
        self.tokens = StreamTokens(cfg.transport.stream_secret.encode(), cfg.transport.stream_token_ttl_s)
        self.webhooks = Webhooks(self.tokens, self.shared)
        self.playground = Playground(self.shared, self._operator, self.media_stream)
        self.status: Status | None = None
        self.status_at = 0.0
        self.stopping = asyncio.Event()
        self.incarnations: dict[str, int] = {}  # each peer's last seen incarnation, to notice restarts
        self.unstarted = 0  # Media Stream sockets past the upgrade that have not said `start` yet

    # --- HTTP ----------------------------------------------------------------------------------
    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus text format; for operators only, like /health."""
        if not self._operator(request):
            self.shared.counters["metrics_refused"] += 1
            return web.Response(status=404, text="not found\n")
        return web.Response(body=self.shared.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _snapshot(self) -> Snapshot:
        shared = self.shared
        return Snapshot(calls_active=len(shared.calls), status=self.status,
                        counters={**shared.counters, **self._file_counters()},
                        ring_drops={"inbound": sum(r.stats().drops for r in self.pool.inbound),
                                    "outbound": sum(r.stats().drops for r in self.pool.outbound)},
                        admission_limit=shared.admission.limit, turned_away=shared.admission.turned_away)

    async def health(self, request: web.Request) -> web.Response:
        """Loopback only (or with the operator's token): it names live calls, PIDs and exit reasons."""
        if not self._operator(request):
            self.shared.counters["health_refused"] += 1
            return web.Response(status=404, text="not found\n")
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
            # Caller frames whose ring write had to wake the speech process (none while it runs on its tick).
            "inbound_wakeups": self.pool.doorbells["inbound"].wakeups,
            "calls": {call_id: call.live_summary() for call_id, call in shared.calls.items()},
            "ended": list(shared.ended),
            "files": {**self._file_counters(),
                      "trace_pending": shared.trace.pending if shared.trace is not None else 0},
        }
        return web.Response(status=code, body=msgspec.json.encode(body), content_type="application/json")

    def _operator(self, request: web.Request) -> bool:
        return bearer_is(request, self.cfg.transport.health_token) or loopback(request.remote)

    def _file_counters(self) -> dict[str, int]:
        """What the recorder and the trace sink could not write (a slow or full disk): dropped, never queued."""
        recorder, trace = self.shared.recorder, self.shared.trace
        out = {"trace_dropped": trace.dropped if trace is not None else 0}
        if recorder is not None:
            out.update(recording_errors=recorder.errors, recording_dropped_audio_bytes=recorder.dropped_audio_bytes,
                       recording_dropped_events=recorder.dropped_events)
        return out

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """A Media Stream from Twilio: refused unless signed; then a call like any other (`media_stream`)."""
        if self.cfg.transport.validate_signatures and not self.webhooks.upgrade_signed(request):
            log.warning("refused media stream upgrade from %s: bad or missing X-Twilio-Signature", request.remote)
            self.shared.counters["streams_refused_signature"] += 1
            return web.Response(status=403, text="invalid signature\n")
        return await self.media_stream(request, self._verify_token)

    async def media_stream(self, request: web.Request, verify: Verify) -> web.StreamResponse:
        """A Media Stream (Twilio's, or the playground's): read up to its `start`, which `verify` lets in or not
        (None: in; else why not), and which makes it a call."""
        cfg = self.cfg.transport
        if self.unstarted >= cfg.max_unstarted_streams:
            log.warning("media stream upgrade from %s shed: %d sockets have not said start yet "
                        "(transport.max_unstarted_streams)", request.remote, self.unstarted)
            self.shared.counters["streams_shed_unstarted"] += 1
            return web.Response(status=503, text="too many streams starting\n")
        transport = request.transport
        if transport is not None:  # a socket nobody reads fills these, not minutes of kernel buffer
            transport.set_write_buffer_limits(high=cfg.send_buffer_bytes)
            if (sock := transport.get_extra_info("socket")) is not None:
                sock.setsockopt(socket_.SOL_SOCKET, socket_.SO_SNDBUF, cfg.send_buffer_bytes)
        ws = web.WebSocketResponse(max_msg_size=cfg.max_message_bytes, autoping=True,
                                   writer_limit=cfg.send_buffer_bytes)
        await ws.prepare(request)
        limits = SocketLimits(cfg.start_timeout_s, cfg.stream_idle_timeout_s, cfg.send_timeout_s)
        media = MediaSocket(ws, MediaStreamSession(verify), limits, self.shared.counters,
                            request.remote, transport)
        events = media.events()
        try:
            self.unstarted += 1
            try:
                started = await _first_start(events)
            finally:
                self.unstarted -= 1
            if started is not None:  # the rest of the socket is the call's
                await self._start_call(media, started, events)
        finally:
            if not ws.closed:
                await media.close(1000, "")
        return ws

    async def _start_call(self, socket: MediaSocket, started: Started,
                          events: AsyncIterator[tuple[int, StreamEvent]]) -> None:
        call_id = started.call_sid
        party = self.shared.reservations.claim(call_id) or Party()
        lease = None if call_id in self.shared.calls else self.pool.lease(call_id)
        if lease is None:
            await self._refuse(socket, call_id)
            return
        self.shared.counters["calls_started"] += 1
        await PhoneCall(self.shared, lease, socket, started, party).run(events)

    def _verify_token(self, params: dict[str, str], call_sid: str, account_sid: str) -> str | None:
        account = self.cfg.twilio.account_sid
        if account and account_sid != account:
            return "stream from another Twilio account"  # its line stays held: that was not our call's stream
        token = params.get(TOKEN_PARAMETER)
        refusal = "stream token missing from customParameters" if token is None else self.tokens.spend(token, call_sid)
        if refusal is not None:  # Twilio ends a call whose stream is refused: the line held for it is free again
            self.shared.reservations.claim(call_sid)
        return refusal

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
        app.router.add_get("/metrics", self.metrics)
        self.webhooks.add_routes(app)
        app.router.add_get(STREAM_PATH, self.stream)
        self.playground.add_routes(app)
        return app

    async def listen(self, runner: web.AppRunner) -> asyncio.Server:
        """The listening socket, through `ConnectionCap`: aiohttp's own sites would accept without limit."""
        cfg = self.cfg.transport
        assert runner.server is not None
        cap = ConnectionCap(runner.server, cfg.max_connections, self.shared.counters)
        return await asyncio.get_running_loop().create_server(cap, cfg.host, cfg.port, reuse_address=True)

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
        # keepalive_timeout: aiohttp arms it when a connection opens and after each answer, and closes a connection
        # still short of a whole request then: a client trickling header bytes holds its socket that long at most.
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False,
                               keepalive_timeout=self.cfg.transport.request_timeout_s)
        await runner.setup()
        listening: asyncio.Server | None = None
        try:
            listening = await self.listen(runner)
            self.shared.doorbell.start(loop)
            self.bus.send("supervisor", Ready(proc="transport", pid=os.getpid(), incarnation=self.run.incarnation))
            log.info("ready: listening on http://%s:%d", self.cfg.transport.host, self.cfg.transport.port)
            if "transport" in self.cfg.faults.hang_after_ready:
                log.error("faults.hang_after_ready lists 'transport': hanging on purpose")
                threading.Event().wait()
            await supervise(self.stopping, (self.bus_loop, self.heartbeat_loop, self.tick_loop))
        finally:
            if listening is not None:
                listening.close()
            for call in list(self.shared.calls.values()):
                with contextlib.suppress(Exception):
                    await call.socket.close(1001, "engine shutting down")
            await runner.cleanup()
            if self.shared.after is not None:
                await self.shared.after.close()
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


class LoopDied(RuntimeError):
    """A loop every call shares ended: the transport cannot go on deaf, so it exits and is restarted."""


async def supervise(stopping: asyncio.Event, loops: Iterable[Callable[[], Coroutine[Any, Any, None]]]) -> None:
    """Run the shared loops until `stopping` is set. One that ends (they never should) cancels the others and
    raises `LoopDied`: the process exits with the reason, and the supervisor restarts it."""
    tasks = {asyncio.create_task(loop_(), name=getattr(loop_, "__name__", "loop")) for loop_ in loops}
    stop = asyncio.create_task(stopping.wait())
    try:
        done, _ = await asyncio.wait({stop, *tasks}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (stop, *tasks):
            task.cancel()
        await asyncio.gather(stop, *tasks, return_exceptions=True)
    died = [task for task in done if task is not stop]
    if died:
        task = died[0]
        why = "returned" if task.cancelled() or task.exception() is None else repr(task.exception())
        log.critical("transport's %s loop %s: exiting so the supervisor restarts the transport", task.get_name(), why)
        raise LoopDied(f"{task.get_name()} {why}") from (None if task.cancelled() else task.exception())


async def _first_start(events: AsyncIterator[tuple[int, StreamEvent]]) -> Started | None:
    """Read a stream up to its `start` (None: it ended before saying it); `events` goes on from there."""
    async for _, event in events:
        if isinstance(event, Started):
            return event
    return None




async def _serve(cfg: Config, run: RunInfo) -> None:
    await TransportProc(cfg, run).main()  # made on the loop: its bus's sockets belong to it


def main(cfg_bytes: bytes, run_bytes: bytes) -> None:
    cfg, run = bootstrap("transport", cfg_bytes, run_bytes)
    asyncio.run(_serve(cfg, run))
