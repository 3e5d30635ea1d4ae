"""One streaming call in the transport: its socket loop, its send loop, its conversation and its end.

A `PhoneCall` is made when a Media Stream says `start` and a ring pair is leased for
it. `run()` tells the model processes the call started, starts the send loop and
reads the rest of the socket: caller audio goes into the inbound ring the moment it
arrives; keypresses and echoed marks go to the call's `Conductor`. The bus loop
hands it what the speech and TTS processes say about it (`on_bus`), and the tick
loop the time. The conductor decides; this carries its actions out: Twilio `clear`,
`Cancel`/`Heard`/`Respond`/`Sentence` on the bus, hang-ups. It also stamps the
transport's trace stages. When the socket loop ends, for whatever reason, the call
ends once: the model processes are told, its ring pair goes back to the pool, and
its summary is kept for /health.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from engine.admission import Party
from engine.call_audio import CallAudio
from engine.call_transcript import CallTranscript
from engine.conductor import Conductor
from engine.conductor_io import (
    Action,
    AudioStarted,
    CancelReply,
    Clear,
    CommitReply,
    Connected,
    DiscardReply,
    Event,
    HangUp,
    HungUp,
    KeyPressed,
    MarkPlayed,
    Note,
    PrepareReply,
    Remembered,
    ReportHeard,
    RequestReply,
    RestoreHistory,
    Speak,
    Transfer,
    TransferFailed,
)
from engine.handoff import put_through
from engine.media_stream import Audio, Dtmf, MarkEcho, Started
from engine.privacy import spoken
from engine.reply_track import heard_words
from ipc.pool import Lease
from ipc.ring import RingReader, RingWriter
from ipc.schema import (
    MODEL_PROCS,
    CallEnded,
    CallStarted,
    Cancel,
    Commit,
    EndOfTurn,
    Heard,
    History,
    Prepare,
    Respond,
    Sentence,
    SpeechResumed,
    SpeechStarted,
    SpeechSustained,
    Spoken,
    Transcript,
)
from procs.call_stages import CallStages
from procs.media_socket import CallerNotReading, MediaSocket, StreamEvent
from procs.transport_shared import TransportShared

log = logging.getLogger("engine.transport")

IDLE_RECHECK_S = 1.0
"""How long a send loop with no audio due waits before it looks again at its socket and its ring pair's owner.
Whatever makes audio due (a ring write, a `clear`, a commit) wakes it sooner."""

CallerMsg = SpeechStarted | SpeechSustained | EndOfTurn | Transcript | SpeechResumed | Spoken


class PhoneCall:
    """A call from its stream's `start` to its end."""

    def __init__(self, shared: TransportShared, lease: Lease, socket: MediaSocket, started: Started,
                 party: Party) -> None:
        cfg = shared.cfg
        self.shared = shared
        self.party = party
        self.lease = lease
        self.call_id = lease.call_id
        self.socket = socket
        self.started = started
        record = self._record_audio if shared.recorder is not None else None
        self.audio = CallAudio(started.stream_sid, RingWriter(shared.pool.inbound[lease.slot], lease.epoch),
                               RingReader(shared.pool.outbound[lease.slot], lease.epoch),
                               inbound_rate=cfg.transport.inbound_rate,
                               lead_s=cfg.transport.outbound_lead_ms / 1000,
                               spill_s=cfg.transport.inbound_spill_s, record=record)
        self.conductor = Conductor(cfg.conversation, time.monotonic())
        self.stages = CallStages(shared, self.call_id)
        self.transcript = CallTranscript(time.monotonic(), time.time())
        self._transfer: asyncio.Future[None] | None = None
        self.hangup_reason: str | None = None
        self._waiter = shared.doorbell.waiter(shared.pool.outbound[lease.slot])
        self._sender: asyncio.Task[None] | None = None
        self._control: list[tuple[str, int]] = []  # (clear message, its reply's gen): sent before any audio
        self._closing: set[asyncio.Future[None]] = set()  # socket closes in flight (kept referenced)

    @property
    def closed(self) -> bool:
        return self.socket.ws.closed

    # --- the socket loop --------------------------------------------------------------------
    async def run(self, events: AsyncIterator[tuple[int, StreamEvent]]) -> None:
        """The call, from `start` to its end: `events` is the rest of the socket's `MediaSocket.events()`."""
        shared = self.shared
        shared.calls[self.call_id] = self
        if shared.recorder is not None:
            shared.recorder.open(self.call_id)
        for peer in MODEL_PROCS:
            shared.bus.send(peer, CallStarted(call_id=self.call_id, slot=self.lease.slot, epoch=self.lease.epoch,
                                              inbound_rate=shared.cfg.transport.inbound_rate, live=len(shared.calls)))
        self._sender = asyncio.ensure_future(self._send_loop())
        self._sender.add_done_callback(self._sender_done)
        self.record({"event": "start", "stream_sid": self.started.stream_sid, "slot": self.lease.slot,
                     "epoch": self.lease.epoch, "custom_parameters": sorted(self.started.custom_parameters)})
        log.info("call %s streaming on ring pair %d (epoch %d)", self.call_id, self.lease.slot, self.lease.epoch)
        try:
            if shared.after is not None and (remembered := await shared.after.recall(self.party)):
                await self.feed(Remembered(tuple(remembered)))
            await self.feed(Connected(screen=self.party.outbound and shared.cfg.conversation.machine_detection,
                                      answered=shared.answers.take(self.call_id, time.monotonic())))
            async for t_ns, event in events:
                await self._on_stream(t_ns, event)
        finally:
            await self._end()

    async def _on_stream(self, t_ns: int, event: StreamEvent) -> None:
        if isinstance(event, Audio):
            self.audio.on_media(event.mulaw, t_ns, event.timestamp_ms)
            self.shared.inbound_us.add((time.monotonic_ns() - t_ns) / 1000)
        elif isinstance(event, Dtmf):
            self.record({"event": "dtmf", "digit": event.digit})
            await self.feed(KeyPressed(event.digit))
        elif isinstance(event, MarkEcho):
            self.record({"event": "mark", "name": event.name})
            if event.seq is not None:
                await self.feed(MarkPlayed(event.seq))

    # --- the conversation -------------------------------------------------------------------
    async def on_bus(self, msg: CallerMsg) -> None:
        """What the speech or TTS process says about this call."""
        self.record({"event": type(msg).__name__, **msgspec.to_builtins(msg)})
        if isinstance(msg, SpeechStarted | EndOfTurn | Transcript):
            self.stages.caller(msg)
        await self.feed(msg)

    async def feed(self, event: Event) -> None:
        """Give the conductor an event and carry out what it decides. A step that fails (a socket gone mid-send,
        a bug) ends this call, never the loop every call shares."""
        if self.closed and not isinstance(event, HungUp):
            return
        try:
            now = time.monotonic()
            actions = self.conductor.handle(event, now, self.audio.played_seq(now))
            self.transcript.observe(event, actions, now)
            for action in actions:
                await self._act(action)
        except Exception as exc:
            if self.closed:
                log.info("call %s: conversation step after the socket closed: %r", self.call_id, exc)
                return
            log.exception("call %s: conversation step failed; ending the call", self.call_id)
            self.shared.counters["conversation_failures"] += 1
            self.close_soon(1011, "engine error")

    async def _act(self, action: Action) -> None:
        bus = self.shared.bus
        if isinstance(action, Clear):
            # The send loop sends it, ahead of any audio: this runs on loops every call shares (the bus, the tick),
            # which must never wait on one caller's network.
            self._control.append((self.audio.clear(time.monotonic(), action.gen), action.gen))
            self._waiter.kick.set()
            self.record({"event": "clear", "gen": action.gen})
        elif isinstance(action, CancelReply):
            for peer in ("llm", "tts"):
                bus.send(peer, Cancel(call_id=self.call_id, gen=action.gen))
        elif isinstance(action, ReportHeard):
            bus.send("llm", Heard(call_id=self.call_id, gen=action.gen, text=action.text))
            self.record({"event": "heard", "gen": action.gen, "text": action.text})
        elif isinstance(action, RestoreHistory):
            bus.send("llm", History(call_id=self.call_id, turns=list(action.turns)))
            self.record({"event": "history", "turns": len(action.turns)})
        elif isinstance(action, RequestReply):
            if action.provisional:
                self.audio.hold(action.gen)
            bus.send("llm", Respond(call_id=self.call_id, gen=action.gen, caller_text=action.caller_text,
                                    say=action.say, provisional=action.provisional))
            self.stages.requested(action.gen, bool(action.caller_text), action.provisional)
            self.record({"event": "respond", "gen": action.gen, "caller_text": action.caller_text,
                         "say": action.say, "provisional": action.provisional})
        elif isinstance(action, PrepareReply):
            bus.send("llm", Prepare(call_id=self.call_id))
        elif isinstance(action, CommitReply):
            self.audio.release(action.gen)
            self._waiter.kick.set()  # its audio may all be queued already: no ring write will wake the send loop
            bus.send("llm", Commit(call_id=self.call_id, gen=action.gen))
            self.stages.committed(action.gen)
            self.record({"event": "commit", "gen": action.gen})
        elif isinstance(action, DiscardReply):
            self.audio.discard(time.monotonic(), action.gen)
            self.stages.stamp(action.gen, "reply_discarded", time.monotonic_ns())
            self.record({"event": "discard", "gen": action.gen})
        elif isinstance(action, Speak):
            bus.send("tts", Sentence(call_id=self.call_id, gen=action.gen, index=0, text=action.text, last=True,
                                     fixed=True))
            self.stages.requested(action.gen, False)
            self.record({"event": "speak", "gen": action.gen, "text": action.text})
        elif isinstance(action, HangUp):
            self.hangup_reason = action.reason
            log.info("call %s: hanging up (%s)", self.call_id, action.reason)
            self.close_soon(1000, action.reason)
        elif isinstance(action, Transfer):
            self.record({"event": "transfer", "to": action.to})
            self._transfer = asyncio.ensure_future(self._put_through(action.to))
        elif isinstance(action, Note):
            self._note(action)

    async def _put_through(self, to: str) -> None:
        """Ask Twilio to put the call through to a person (a REST request: on a worker thread). Once it has, the
        engine's part is over: its stream is closed here, as Twilio would."""
        twilio = self.shared.cfg.twilio
        try:
            await asyncio.to_thread(put_through, twilio.account_sid, twilio.auth_token, self.call_id, to,
                                    self.shared.twilio_http)
        except Exception as exc:  # TransferError, or the network: the caller stays with the bot
            log.warning("call %s: not put through: %s", self.call_id, exc)
            self.shared.counters["transfers_failed"] += 1
            await self.feed(TransferFailed(str(exc)))
            return
        self.shared.counters["transfers"] += 1
        self.hangup_reason = "put through to a person"
        log.info("call %s: put through to a person", self.call_id)
        self.close_soon(1000, "transferred")

    def _note(self, note: Note) -> None:
        detail = f": {spoken(note.detail, self.shared.cfg.engine.log_private)}" if note.detail else ""
        log.info("call %s gen %d: %s%s", self.call_id, note.gen, note.what, detail)
        self.record({"event": "note", "what": note.what, "gen": note.gen, "detail": note.detail})
        if note.what == "barge-in":
            self.stages.barge_in(note.gen)

    def record(self, event: dict[str, Any]) -> None:
        if self.shared.recorder is not None:
            self.shared.recorder.event(self.call_id, {"t_ns": time.monotonic_ns(), **event})

    def _record_audio(self, direction: str, pcm: bytes) -> None:
        assert self.shared.recorder is not None
        self.shared.recorder.audio(self.call_id, direction, pcm)

    # --- bot audio out ----------------------------------------------------------------------
    async def _send_loop(self) -> None:
        """Move bot audio from the ring to Twilio, paced; waits on the doorbell thread when there is none."""
        audio, ws, socket = self.audio, self.socket.ws, self.socket
        while not ws.closed:
            while self._control:
                message, gen = self._control.pop(0)
                await socket.send(message)
                self.stages.cleared(gen)
            t0 = time.perf_counter_ns()
            audio.pull()
            messages = audio.due_messages(time.monotonic())
            for message in messages:
                await socket.send(message)
            if messages:
                self.shared.outbound_us.add((time.perf_counter_ns() - t0) / 1000 / len(messages))
            while audio.gens_started:
                gen = audio.gens_started.pop(0)
                self.stages.sounded(gen)
                await self.feed(AudioStarted(gen))
            if self._control:  # a clear queued meanwhile goes before anything else
                continue
            due = audio.next_due_at()
            if due is not None:
                await self._nap(due - time.monotonic())
            elif audio.outbound.ring.epoch != self.lease.epoch:
                # Our ring pair was reclaimed or re-leased under us: this call cannot play audio any more.
                log.error("call %s: its ring pair now belongs to another call; ending it", self.call_id)
                await ws.close(code=1011, message=b"engine error")
                return
            else:
                await self._waiter.wait(audio.outbound.ring, IDLE_RECHECK_S)

    async def _nap(self, seconds: float) -> None:
        """Sleep until the next frame is due, or until a `clear` is queued (`_act` kicks the waiter)."""
        kick = self._waiter.kick
        kick.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, seconds)):
                await kick.wait()

    def _sender_done(self, task: asyncio.Task[None]) -> None:
        """A sender that died (not cancelled) would leave the caller in silence: close the socket instead,
        which ends the call through the normal path, and say why. (A caller that stopped reading was cut off
        already: `MediaSocket.send` aborted the connection.)"""
        if task.cancelled() or task.exception() is None or self.closed or isinstance(task.exception(),
                                                                                      CallerNotReading):
            return
        log.error("call %s: outbound audio failed (%r); ending the call", self.call_id, task.exception())
        self.shared.counters["outbound_failures"] += 1
        self.close_soon(1011, "engine error")

    def close_soon(self, code: int, reason: str) -> None:
        """Close the socket from code that cannot wait for it; the socket loop then ends the call."""
        self._closing.add(closing := asyncio.ensure_future(self.socket.close(code, reason)))
        closing.add_done_callback(self._closing.discard)

    # --- the end ----------------------------------------------------------------------------
    async def _end(self) -> None:
        shared = self.shared
        shared.calls.pop(self.call_id, None)
        outcome = f"engine hung up: {self.hangup_reason}" if self.hangup_reason else self.socket.outcome
        now = time.monotonic()
        reply, played = self.conductor.reply, self.audio.played_seq(now)
        heard_now = {reply.gen: heard_words(reply, played)} if reply is not None and not reply.done else {}
        await self.feed(HungUp())
        if self._sender is not None:
            self._sender.cancel()
            try:
                await self._sender
            except (asyncio.CancelledError, ConnectionError):
                pass
            except Exception:  # the call's cleanup below must happen whatever killed its sender
                log.exception("call %s: outbound audio task failed", self.call_id)
        for peer in MODEL_PROCS:
            shared.bus.send(peer, CallEnded(call_id=self.call_id, slot=self.lease.slot, epoch=self.lease.epoch,
                                            reason=outcome))
        self.audio.outbound.discard_all()
        shared.pool.release(self.lease)
        self._waiter.close()
        summary = self.summary(outcome)
        shared.ended.append(summary)
        self.record({"event": "end", **summary})
        transcript = self.transcript.document(now, outcome, heard_now, call_sid=self.call_id,
                                              stream_sid=self.started.stream_sid, number=self.party.number,
                                              direction="outbound" if self.party.outbound else "inbound")
        if shared.after is not None:
            shared.after.call_over(self.call_id, transcript, self.party, self.conductor.history.turns())
        elif shared.recorder is not None:
            shared.recorder.close(self.call_id)
        shared.counters["calls_ended"] += 1
        shared.metrics.call_ended(outcome)
        shared.counters["seq_gaps"] += self.socket.session.seq_gaps
        log.info("call %s ended: %s (%d frames in, %d out, %d sequence gaps)", self.call_id, outcome,
                 self.audio.frames_in, self.audio.frames_out, self.socket.session.seq_gaps)

    def summary(self, outcome: str) -> dict[str, Any]:
        """What /health and the recording keep of a call that ended: its outcome and its audio's accounting."""
        a, session = self.audio, self.socket.session
        return {"call_id": self.call_id, "outcome": outcome, "ended_ns": time.monotonic_ns(),
                "frames_in": a.frames_in, "last_timestamp_ms": a.last_timestamp_ms,
                "inbound_dropped": a.inbound_dropped, "inbound_spilled": a.inbound_spilled,
                "inbound_late": a.inbound_late,
                "inbound_max_late_ms": round(a.inbound_max_late_ms, 1), "seq_gaps": session.seq_gaps,
                "seq_out_of_order": session.seq_out_of_order, "frames_out": a.frames_out,
                "outbound_gaps": a.outbound_gaps, "frames_dropped_cleared": a.frames_dropped_cleared,
                "marks_sent": a.marks_sent}

    def live_summary(self) -> dict[str, Any]:
        a = self.audio
        return {"stream_sid": self.started.stream_sid, "frames_in": a.frames_in, "frames_out": a.frames_out,
                "inbound_dropped": a.inbound_dropped, "inbound_spilled": a.inbound_spilled,
                "marks_sent": a.marks_sent}
