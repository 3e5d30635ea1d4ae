"""The transport process: the engine's only door to the phone network.

HTTP: the Twilio voice webhook (TwiML), the status callback, /health. WebSocket:
Twilio Media Streams, one socket per call, each driven through a
`MediaStreamSession` (protocol) and a `CallAudio` (rings <-> Twilio messages), and
each call's conversation is conducted here (`procs.conversation`): greeting,
barge-in, what the caller heard, keypresses, timeouts, recovery after restarts.
Everything runs on one asyncio loop; file writes go to the recorder's thread, and
a watcher thread sleeps on the outbound doorbell so bot audio leaves the moment
the TTS publishes it. A socket that misbehaves is closed with a reason; no other
call notices.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from aiohttp import web

from engine.call_audio import CallAudio
from engine.conductor_io import Connected, HungUp, KeyPressed, MarkPlayed, PeerRestarted, Tick
from engine.config import Config
from engine.health import build_health
from engine.media_stream import (
    CLOSE_POLICY,
    Audio,
    Dtmf,
    MarkEcho,
    MediaStreamSession,
    Reject,
    Started,
    Stopped,
)
from engine.recorder import Recorder
from engine.stats import Recent
from engine.telephony import (
    STATUS_PATH,
    STREAM_PATH,
    TOKEN_PARAMETER,
    VOICE_PATH,
    StreamTokens,
    connect_twiml,
    reject_twiml,
    signature_valid,
    stream_url,
)
from engine.trace import TraceSink
from ipc.bus import AsyncBus
from ipc.pool import Lease, RingPool
from ipc.ring import Ring, RingReader, RingWriter
from ipc.schema import (
    CallEnded,
    CallStarted,
    EndOfTurn,
    Heartbeat,
    Ready,
    RunInfo,
    Shutdown,
    SpeechStarted,
    SpeechSustained,
    Spoken,
    Status,
    Transcript,
)
from procs.child import bootstrap, watch_parent
from procs.conversation import Conversation

log = logging.getLogger("engine.transport")

CLOSE_TRY_AGAIN = 1013
CALL_PEERS = ("speech", "llm", "tts")
ENDED_KEPT = 200


async def _messages_until_idle(ws: web.WebSocketResponse,
                               idle_s: float) -> AsyncIterator[aiohttp.WSMessage | None]:
    """The socket's messages until it closes; None, once, if it goes silent for `idle_s` (a network that
    died without a FIN), after closing it."""
    while True:
        try:
            msg = await ws.receive(timeout=idle_s)
        except asyncio.TimeoutError:
            await ws.close(code=1001, message=b"stream idle")
            yield None
            return
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
            return
        yield msg


def _idle_or_audio(someone_waiting: threading.Event, rings: list[Ring]) -> bool:
    return someone_waiting.is_set() or any(ring.available() for ring in rings)


class ActiveCall:
    """A streaming call: its lease, socket, audio and the task that sends its audio."""

    def __init__(self, lease: Lease, ws: web.WebSocketResponse, audio: CallAudio, started: Started) -> None:
        self.lease = lease
        self.ws = ws
        self.audio = audio
        self.started = started
        self.kick = asyncio.Event()
        self.waiting_for_audio = False  # read by the doorbell thread
        self.watch_ring: Ring | None = None  # the doorbell thread's own view of the outbound ring
        self.sender: asyncio.Task[None] | None = None
        self.conversation: Conversation | None = None
        self.dtmf: list[str] = []
        self.marks_echoed: list[str] = []


def call_summary(call: ActiveCall, outcome: str, session: MediaStreamSession) -> dict[str, Any]:
    """What /health and the recording keep of a call that ended: its outcome and its audio's accounting."""
    a = call.audio
    return {"call_id": call.lease.call_id, "outcome": outcome, "ended_ns": time.monotonic_ns(),
            "frames_in": a.frames_in, "last_timestamp_ms": a.last_timestamp_ms,
            "inbound_dropped": a.inbound_dropped, "inbound_late": a.inbound_late,
            "inbound_max_late_ms": round(a.inbound_max_late_ms, 1), "seq_gaps": session.seq_gaps,
            "seq_out_of_order": session.seq_out_of_order, "frames_out": a.frames_out,
            "outbound_gaps": a.outbound_gaps, "frames_dropped_cleared": a.frames_dropped_cleared,
            "marks_sent": a.marks_sent}


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
        self.tokens = StreamTokens(cfg.transport.stream_secret.encode(), cfg.transport.stream_token_ttl_s)
        self.calls: dict[str, ActiveCall] = {}
        self.counters: Counter[str] = Counter()
        # Per-frame cost on the event loop, in µs: a Twilio media message in (parse, decode,
        # resample, ring write), and a 20 ms frame out (pull, convert, send).
        self.inbound_us = Recent()
        self.outbound_us = Recent()
        self.recorder = Recorder(Path(cfg.transport.recordings_dir)) if cfg.transport.recordings_dir else None
        self._watch_stop = threading.Event()
        self._someone_waiting = threading.Event()  # set when a call's sender goes idle
        self._closing: set[asyncio.Future[bool]] = set()  # socket closes in flight (kept referenced)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.trace = TraceSink(Path(cfg.engine.trace_file)) if cfg.engine.trace_file else None
        self.incarnations: dict[str, int] = {}  # each peer's last seen incarnation, to notice restarts
        self.ended: deque[dict[str, Any]] = deque(maxlen=ENDED_KEPT)  # the latest calls' outcomes, for /health

    # --- HTTP: webhooks and health ---------------------------------------------------------
    def public_url(self, request: web.Request) -> str:
        if self.cfg.transport.public_url:
            return self.cfg.transport.public_url.rstrip("/")
        proto = request.headers.get("X-Forwarded-Proto", request.scheme)
        host = request.headers.get("X-Forwarded-Host", request.host)
        return f"{proto}://{host}"

    async def _twilio_form(self, request: web.Request, path: str) -> dict[str, str] | web.Response:
        """The webhook's form, if it really comes from Twilio; else the refusal to answer with."""
        try:
            form = await request.post()
        except (ValueError, UnicodeDecodeError) as exc:  # not a form Twilio would send (found by fuzzing)
            log.warning("refused %s from %s: unreadable form body (%s)", path, request.remote, exc)
            self.counters["webhook_malformed"] += 1
            return web.Response(status=400, text="malformed form body\n")
        params = {k: v for k, v in form.items() if isinstance(v, str)}
        if self.cfg.transport.validate_signatures:
            url = self.public_url(request) + path + (f"?{request.query_string}" if request.query_string else "")
            if not self.cfg.twilio.auth_token:
                log.warning("refused %s: twilio.auth_token (TWILIO_AUTH_TOKEN) is not set, so X-Twilio-Signature "
                            "cannot be checked", path)
                self.counters["webhook_refused"] += 1
                return web.Response(status=403, text="signature cannot be validated\n")
            if not signature_valid(self.cfg.twilio.auth_token, url, params,
                                   request.headers.get("X-Twilio-Signature")):
                log.warning("refused %s from %s: bad or missing X-Twilio-Signature (validated against %s)",
                            path, request.remote, url)
                self.counters["webhook_refused"] += 1
                return web.Response(status=403, text="invalid signature\n")
        return params

    async def voice(self, request: web.Request) -> web.Response:
        params = await self._twilio_form(request, VOICE_PATH)
        if isinstance(params, web.Response):
            return params
        call_sid = params.get("CallSid", "")
        if not call_sid:
            return web.Response(status=400, text="CallSid missing\n")
        if len(self.pool.leases()) >= self.pool.max_calls:
            self.counters["calls_refused_capacity"] += 1
            log.warning("call %s refused: all %d lines busy", call_sid, self.pool.max_calls)
            twiml = reject_twiml("All our lines are busy right now. Please call again in a few minutes.")
        else:
            self.counters["webhooks_answered"] += 1
            log.info("call %s (%s -> %s, %s) answered", call_sid, params.get("From"), params.get("To"),
                     params.get("Direction", "inbound"))
            twiml = connect_twiml(self.public_url(request), self.tokens.issue(call_sid))
        return web.Response(text=twiml, content_type="text/xml")

    async def status_callback(self, request: web.Request) -> web.Response:
        params = await self._twilio_form(request, STATUS_PATH)
        if isinstance(params, web.Response):
            return params
        what = params.get("StreamEvent") or params.get("CallStatus") or "unknown"
        self.counters[f"status_{what}"] += 1
        call_sid = params.get("CallSid", "")
        log.info("status callback: call %s %s", call_sid, what)
        if self.recorder is not None and call_sid in self.calls:
            self.recorder.event(call_sid, {"t_ns": time.monotonic_ns(), "event": "status", "params": params})
        return web.Response(status=204)

    async def health(self, request: web.Request) -> web.Response:
        assert self.bus is not None
        age = None if self.status is None else time.monotonic_ns() / 1e9 - self.status_at
        code, body = build_health(
            self.status, age, 4 * self.cfg.supervisor.heartbeat_interval_s,
            self.pool.leases(),
            [r.stats() for r in self.pool.inbound], [r.stats() for r in self.pool.outbound],
            {"dropped_sends": self.bus.dropped_sends, "bad_messages": self.bus.bad_messages},
        )
        body["transport"] = {
            "counters": dict(self.counters),
            "inbound_frame_us": self.inbound_us.summary(),
            "outbound_frame_us": self.outbound_us.summary(),
            "calls": {cid: {"stream_sid": c.started.stream_sid, "frames_in": c.audio.frames_in,
                            "frames_out": c.audio.frames_out, "inbound_dropped": c.audio.inbound_dropped,
                            "marks_sent": c.audio.marks_sent}
                      for cid, c in self.calls.items()},
            "ended": list(self.ended),
        }
        return web.Response(status=code, body=msgspec.json.encode(body), content_type="application/json")

    # --- the Media Streams socket ----------------------------------------------------------
    def _verify_token(self, params: dict[str, str], call_sid: str) -> str | None:
        token = params.get(TOKEN_PARAMETER)
        if token is None:
            return "stream token missing from customParameters"
        return self.tokens.verify(token, call_sid)

    def _upgrade_signed(self, request: web.Request) -> bool:
        """Twilio signs the Media Streams upgrade too: the stream URL, no parameters."""
        signature = request.headers.get("X-Twilio-Signature")
        public = self.public_url(request)
        # The wss:// form is what Twilio connects to; accept the https:// spelling of the same URL as well.
        return any(signature_valid(self.cfg.twilio.auth_token, url, {}, signature)
                   for url in (stream_url(public), public + STREAM_PATH))

    async def stream(self, request: web.Request) -> web.StreamResponse:
        if self.cfg.transport.validate_signatures and not self._upgrade_signed(request):
            log.warning("refused media stream upgrade from %s: bad or missing X-Twilio-Signature", request.remote)
            self.counters["streams_refused_signature"] += 1
            return web.Response(status=403, text="invalid signature\n")
        ws = web.WebSocketResponse(max_msg_size=self.cfg.transport.max_message_bytes, autoping=True)
        await ws.prepare(request)
        session = MediaStreamSession(self._verify_token)
        call: ActiveCall | None = None
        outcome = "socket closed without stop"
        try:
            async for msg in _messages_until_idle(ws, self.cfg.transport.stream_idle_timeout_s):
                t_ns = time.monotonic_ns()
                t0 = time.perf_counter_ns()
                if msg is None:
                    outcome = f"stream silent for {self.cfg.transport.stream_idle_timeout_s:g} s"
                    log.warning("media stream %s: %s; treating the caller as gone", session.stream_sid, outcome)
                    break
                if msg.type == aiohttp.WSMsgType.TEXT:
                    event = session.receive(msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    event = session.receive_binary()
                else:  # ERROR: e.g. a message over max_message_bytes; aiohttp has closed with 1009
                    outcome = f"protocol error: {ws.exception()}"
                    log.warning("media stream from %s closed: %s", request.remote, outcome)
                    self.counters["streams_rejected"] += 1
                    break
                if event is None:
                    continue
                if isinstance(event, Reject):
                    outcome = f"rejected: {event.reason}"
                    log.warning("media stream %s from %s closed (%d): %s", session.stream_sid or "(no start)",
                                request.remote, event.code, event.reason)
                    self.counters["streams_rejected"] += 1
                    await ws.close(code=event.code, message=event.reason.encode()[:120])
                    break
                if isinstance(event, Started):
                    started = self._start_call(event, ws)
                    if isinstance(started, Reject):
                        outcome = f"refused: {started.reason}"
                        await ws.close(code=started.code, message=started.reason.encode())
                        break
                    call = started
                    await self._conduct(call, Connected())
                elif call is None:
                    continue
                elif isinstance(event, Audio):
                    call.audio.on_media(event.mulaw, t_ns, event.timestamp_ms)
                    self.inbound_us.add((time.perf_counter_ns() - t0) / 1000)
                elif isinstance(event, Dtmf):
                    call.dtmf.append(event.digit)
                    self._record_event(call, {"event": "dtmf", "digit": event.digit})
                    await self._conduct(call, KeyPressed(event.digit))
                elif isinstance(event, MarkEcho):
                    call.marks_echoed.append(event.name)
                    self._record_event(call, {"event": "mark", "name": event.name})
                    if event.name.isascii() and event.name.isdigit():
                        await self._conduct(call, MarkPlayed(int(event.name)))
                elif isinstance(event, Stopped):
                    outcome = "caller hung up (stop)"
                    break
            if call is not None and call.conversation is not None and call.conversation.hangup_reason:
                outcome = f"engine hung up: {call.conversation.hangup_reason}"
        finally:
            if call is not None:
                await self._end_call(call, outcome, session)
            if not ws.closed:
                await ws.close()
        return ws

    def _start_call(self, started: Started, ws: web.WebSocketResponse) -> ActiveCall | Reject:
        assert self.bus is not None
        call_id = started.call_sid
        if call_id in self.calls:
            log.warning("second stream for call %s refused", call_id)
            return Reject(CLOSE_POLICY, "call already streaming")
        lease = self.pool.lease(call_id)
        if lease is None:
            log.warning("stream for call %s refused: all %d ring pairs in use", call_id, self.pool.max_calls)
            self.counters["calls_refused_capacity"] += 1
            return Reject(CLOSE_TRY_AGAIN, "engine at capacity")
        record = None
        if self.recorder is not None:
            recorder = self.recorder
            recorder.open(call_id)
            record = lambda direction, pcm: recorder.audio(call_id, direction, pcm)  # noqa: E731
        audio = CallAudio(started.stream_sid, RingWriter(self.pool.inbound[lease.slot], lease.epoch),
                          RingReader(self.pool.outbound[lease.slot], lease.epoch),
                          inbound_rate=self.cfg.transport.inbound_rate,
                          lead_s=self.cfg.transport.outbound_lead_ms / 1000, record=record)
        call = ActiveCall(lease, ws, audio, started)
        call.conversation = Conversation(
            self.cfg, call_id, self.bus, self.trace, ws.send_str, audio.clear, audio.played_seq,
            lambda reason: self._close_soon(call, 1000, reason), lambda event: self._record_event(call, event))
        out_ring = self.pool.outbound[lease.slot]
        call.watch_ring = Ring(out_ring.buf, out_ring.base, out_ring.doorbell)
        self.calls[call_id] = call
        for peer in CALL_PEERS:
            self.bus.send(peer, CallStarted(call_id=call_id, slot=lease.slot, epoch=lease.epoch,
                                            inbound_rate=self.cfg.transport.inbound_rate))
        call.sender = asyncio.ensure_future(self._send_loop(call))
        call.sender.add_done_callback(lambda task: self._sender_done(call, task))
        self.counters["calls_started"] += 1
        self._record_event(call, {"event": "start", "stream_sid": started.stream_sid, "slot": lease.slot,
                                  "epoch": lease.epoch, "custom_parameters": sorted(started.custom_parameters)})
        log.info("call %s streaming on ring pair %d (epoch %d)", call_id, lease.slot, lease.epoch)
        return call

    def _sender_done(self, call: ActiveCall, task: asyncio.Task[None]) -> None:
        """A sender that died (not cancelled) would leave the caller in silence: close the socket instead,
        which ends the call through the normal path, and say why."""
        if task.cancelled() or task.exception() is None or call.ws.closed:
            return
        log.error("call %s: outbound audio failed (%r); ending the call", call.lease.call_id, task.exception())
        self.counters["outbound_failures"] += 1
        self._close_soon(call, 1011, "engine error")

    def _close_soon(self, call: ActiveCall, code: int, reason: str) -> None:
        """Close a call's socket from code that cannot await; its stream handler then ends the call."""
        self._closing.add(closing := asyncio.ensure_future(call.ws.close(code=code, message=reason.encode()[:120])))
        closing.add_done_callback(self._closing.discard)

    async def _conduct(self, call: ActiveCall, event: Any) -> None:
        if call.conversation is not None and not call.ws.closed:
            await self._guarded(call, call.conversation.feed(event))

    async def _guarded(self, call: ActiveCall, step: Coroutine[Any, Any, None]) -> None:
        """Run one conversation step; if it fails (a socket gone mid-send, a bug), end that call, not the loop."""
        try:
            await step
        except Exception as exc:
            if not call.ws.closed:
                log.exception("call %s: conversation step failed; ending the call", call.lease.call_id)
                self.counters["conversation_failures"] += 1
                self._close_soon(call, 1011, "engine error")
            else:
                log.info("call %s: conversation step after the socket closed: %r", call.lease.call_id, exc)

    async def _end_call(self, call: ActiveCall, outcome: str, session: MediaStreamSession) -> None:
        assert self.bus is not None
        call_id = call.lease.call_id
        self.calls.pop(call_id, None)
        if call.conversation is not None:
            await call.conversation.feed(HungUp())
        if call.sender is not None:
            call.sender.cancel()
            try:
                await call.sender
            except (asyncio.CancelledError, ConnectionError):
                pass
            except Exception:  # the call's cleanup below must happen whatever killed its sender
                log.exception("call %s: outbound audio task failed", call_id)
        for peer in CALL_PEERS:
            self.bus.send(peer, CallEnded(call_id=call_id, slot=call.lease.slot, epoch=call.lease.epoch,
                                          reason=outcome))
        call.audio.outbound.discard_all()
        self.pool.release(call.lease)
        if call.watch_ring is not None:
            call.watch_ring.close()
        summary = call_summary(call, outcome, session)
        self.ended.append(summary)
        self._record_event(call, {"event": "end", **summary})
        if self.recorder is not None:
            self.recorder.close(call_id)
        self.counters["calls_ended"] += 1
        self.counters["seq_gaps"] += session.seq_gaps
        log.info("call %s ended: %s (%d frames in, %d out, %d sequence gaps)", call_id, outcome,
                 call.audio.frames_in, call.audio.frames_out, session.seq_gaps)

    def _record_event(self, call: ActiveCall, event: dict[str, Any]) -> None:
        if self.recorder is not None:
            self.recorder.event(call.lease.call_id, {"t_ns": time.monotonic_ns(), **event})

    # --- outbound audio --------------------------------------------------------------------
    async def _send_loop(self, call: ActiveCall) -> None:
        """Move bot audio from the ring to Twilio, paced; sleeps on the doorbell thread when idle."""
        audio = call.audio
        while not call.ws.closed:
            t0 = time.perf_counter_ns()
            audio.pull()
            messages = audio.due_messages(time.monotonic())
            for message in messages:
                await call.ws.send_str(message)
            if messages:
                self.outbound_us.add((time.perf_counter_ns() - t0) / 1000 / len(messages))
            while audio.gens_started and call.conversation is not None:
                await call.conversation.audio_started(audio.gens_started.pop(0))
            due = audio.next_due_at()
            if due is not None:
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                continue
            if audio.outbound.ring.epoch != call.lease.epoch:
                # Our ring pair was reclaimed or re-leased under us: this call cannot play audio any more.
                log.error("call %s: its ring pair now belongs to another call; ending it", call.lease.call_id)
                await call.ws.close(code=1011, message=b"engine error")
                return
            call.kick.clear()
            call.waiting_for_audio = True
            self._someone_waiting.set()
            if audio.outbound.ring.available():
                call.waiting_for_audio = False
                await asyncio.sleep(0)  # never spin the loop without yielding
                continue
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(call.kick.wait(), 1.0)
            call.waiting_for_audio = False

    def _watch_outbound(self) -> None:
        """Thread: sleep on the outbound doorbell; kick every idle call whose ring got audio."""
        bell = self.pool.doorbells["outbound"]
        spin = self.cfg.ring.spin_us * 1e-6
        while not self._watch_stop.is_set():
            self._someone_waiting.clear()  # before the snapshot: a sender going idle after it sets it again
            rings = {c: c.watch_ring for c in list(self.calls.values()) if c.waiting_for_audio and c.watch_ring}
            if not rings:
                # Nobody idle: stay off the doorbell, or every TTS write would pay a futex wake for nothing.
                self._someone_waiting.wait(0.05)
                continue
            ready = [c for c, ring in rings.items() if ring.available()]
            if not ready:
                views = list(rings.values())
                # Also wake when another call's sender goes idle: its ring is not in this snapshot.
                bell.wait(functools.partial(_idle_or_audio, self._someone_waiting, views), 0.05, spin)
                continue
            for c in ready:
                c.waiting_for_audio = False
                assert self._loop is not None
                self._loop.call_soon_threadsafe(c.kick.set)

    # --- bus, heartbeat, lifecycle ---------------------------------------------------------
    async def bus_loop(self) -> None:
        assert self.bus is not None
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
            elif isinstance(msg, SpeechStarted | SpeechSustained | EndOfTurn | Transcript | Spoken):
                call = self.calls.get(msg.call_id)
                if call is None or call.conversation is None:
                    continue
                self._record_event(call, {"event": type(msg).__name__, **msgspec.to_builtins(msg)})
                if not call.ws.closed:
                    await self._guarded(call, call.conversation.on_bus(msg))

    async def _notice_restarts(self, status: Status) -> None:
        """A peer that came back as a new incarnation lost its calls' work in flight: tell every conductor."""
        for proc in status.procs:
            if proc.state != "ready" or proc.name == "transport":
                continue
            seen = self.incarnations.get(proc.name)
            self.incarnations[proc.name] = proc.incarnation
            if seen is not None and proc.incarnation > seen:
                log.warning("%s restarted (incarnation %d): telling %d calls", proc.name, proc.incarnation,
                            len(self.calls))
                for call in list(self.calls.values()):
                    await self._conduct(call, PeerRestarted(proc.name))

    async def tick_loop(self) -> None:
        """Give every conductor the time: re-prompts, keypad timeouts, reply timeouts, the call time limit."""
        while True:
            await asyncio.sleep(self.cfg.conversation.tick_s)
            for call in list(self.calls.values()):
                await self._conduct(call, Tick())

    async def heartbeat_loop(self) -> None:
        assert self.bus is not None
        while True:
            self.bus.send("supervisor", Heartbeat(proc="transport", pid=os.getpid(),
                                                  incarnation=self.run.incarnation,
                                                  stats={"calls": len(self.calls)}))
            await asyncio.sleep(self.cfg.supervisor.heartbeat_interval_s)

    def _stop_from_thread(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.call_soon_threadsafe(self.stopping.set)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.cfg.transport.max_message_bytes)
        app.router.add_get("/health", self.health)
        app.router.add_post(VOICE_PATH, self.voice)
        app.router.add_post(STATUS_PATH, self.status_callback)
        app.router.add_get(STREAM_PATH, self.stream)
        return app

    async def main(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        watch_parent(self.run, lambda: self._stop_from_thread(loop))
        self.bus = AsyncBus(Path(self.run.runtime_dir), "transport")
        self.pool.doorbells["outbound"].reset_waiters()  # its only sleeper is our watcher thread
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        watcher = threading.Thread(target=self._watch_outbound, name="outbound-doorbell", daemon=True)
        try:
            site = web.TCPSite(runner, self.cfg.transport.host, self.cfg.transport.port, reuse_address=True)
            await site.start()
            watcher.start()
            self.bus.send("supervisor", Ready(proc="transport", pid=os.getpid(), incarnation=self.run.incarnation))
            log.info("ready: listening on http://%s:%d", self.cfg.transport.host, self.cfg.transport.port)
            if "transport" in self.cfg.faults.hang_after_ready:
                log.error("faults.hang_after_ready lists 'transport': hanging on purpose")
                threading.Event().wait()
            tasks = [asyncio.create_task(self.bus_loop()), asyncio.create_task(self.heartbeat_loop()),
                     asyncio.create_task(self.tick_loop())]
            await self.stopping.wait()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for call in list(self.calls.values()):
                with contextlib.suppress(Exception):
                    await call.ws.close(code=1001, message=b"engine shutting down")
            await runner.cleanup()
            self._watch_stop.set()
            if watcher.is_alive():
                watcher.join(2)
            if self.recorder is not None:
                self.recorder.stop()
            if self.trace is not None:
                self.trace.close()
            self.bus.close()
            self.pool.close()
            log.info("exited cleanly")


def main(cfg_bytes: bytes, run_bytes: bytes) -> None:
    cfg, run = bootstrap("transport", cfg_bytes, run_bytes)
    asyncio.run(TransportProc(cfg, run).main())
