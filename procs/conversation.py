"""The transport's side of a call's conversation: feeds the call's `Conductor` and carries out what it decides.

The conductor (engine/conductor.py) is pure; this is its driver in the transport
process. It turns bus messages (speech, transcripts, spans, trace stages) and
socket events (start, marks, keypresses, stop) into conductor events, with the
time and the play-out position, and turns the conductor's actions into Twilio
messages (`clear`), bus messages (Respond, Cancel, Heard, Sentence) and hang-ups.
It also stamps the transport's trace stages.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from engine.conductor import Conductor
from engine.conductor_io import (
    Action,
    AudioStarted,
    CancelReply,
    Clear,
    Event,
    HangUp,
    Note,
    ReportHeard,
    RequestReply,
    Speak,
)
from engine.config import Config
from engine.trace import TraceSink
from ipc.bus import AsyncBus
from ipc.schema import (
    Cancel,
    EndOfTurn,
    Heard,
    Respond,
    Sentence,
    SpeechStarted,
    SpeechSustained,
    Spoken,
    Transcript,
)

log = logging.getLogger("engine.transport")

CallerMsg = SpeechStarted | SpeechSustained | EndOfTurn | Transcript | Spoken


@dataclass
class TurnTimes:
    """When the caller's latest turn passed each speech stage (monotonic ns), kept until its reply is asked for."""

    speech_end: int = 0
    end_of_turn: int = 0
    transcript: int = 0
    onset: int = 0
    heard: int = 0


class Conversation:
    """Drives one call's conductor. `send_twilio` sends a message on the call's socket; `hang_up` closes it."""

    def __init__(self, cfg: Config, call_id: str, bus: AsyncBus, trace: TraceSink | None,
                 send_twilio: Callable[[str], Coroutine[Any, Any, None]],
                 clear_audio: Callable[[float, int], str], played_seq: Callable[[float], int | None],
                 hang_up: Callable[[str], None], record: Callable[[dict[str, Any]], None]) -> None:
        self.call_id = call_id
        self.conductor = Conductor(cfg.conversation, time.monotonic())
        self.bus = bus
        self.trace = trace
        self._send_twilio = send_twilio
        self._clear_audio = clear_audio
        self._played_seq = played_seq
        self._hang_up = hang_up
        self._record = record
        self.turn = TurnTimes()
        self.hangup_reason: str | None = None

    def stamp(self, gen: int, stage: str, t_ns: int) -> None:
        if self.trace is not None:
            self.trace.add(self.call_id, gen, stage, t_ns)

    async def feed(self, event: Event) -> None:
        now = time.monotonic()
        actions = self.conductor.handle(event, now, self._played_seq(now))
        for action in actions:
            await self._act(action)

    async def on_bus(self, msg: CallerMsg) -> None:
        """A bus message about this call."""
        if isinstance(msg, SpeechStarted):
            self.turn = TurnTimes(onset=msg.onset_t_ns, heard=time.monotonic_ns())
        elif isinstance(msg, EndOfTurn):
            self.turn.speech_end, self.turn.end_of_turn = msg.speech_end_t_ns, msg.t_ns
        elif isinstance(msg, Transcript) and msg.final:
            self.turn.transcript = msg.t_ns
            self.turn.speech_end = self.turn.speech_end or msg.speech_end_t_ns
        await self.feed(msg)

    async def audio_started(self, gen: int) -> None:
        self.stamp(gen, "first_audio_out", time.monotonic_ns())
        await self.feed(AudioStarted(gen))

    async def _act(self, action: Action) -> None:
        call_id = self.call_id
        if isinstance(action, Clear):
            await self._send_twilio(self._clear_audio(time.monotonic(), action.gen))
            self.stamp(action.gen, "clear_sent", time.monotonic_ns())
            self._record({"event": "clear", "gen": action.gen})
        elif isinstance(action, CancelReply):
            for peer in ("llm", "tts"):
                self.bus.send(peer, Cancel(call_id=call_id, gen=action.gen))
        elif isinstance(action, ReportHeard):
            self.bus.send("llm", Heard(call_id=call_id, gen=action.gen, text=action.text))
            self._record({"event": "heard", "gen": action.gen, "text": action.text})
        elif isinstance(action, RequestReply):
            self.bus.send("llm", Respond(call_id=call_id, gen=action.gen, caller_text=action.caller_text,
                                         say=action.say))
            self._stamp_request(action.gen, bool(action.caller_text))
            self._record({"event": "respond", "gen": action.gen, "caller_text": action.caller_text,
                          "say": action.say})
        elif isinstance(action, Speak):
            self.bus.send("tts", Sentence(call_id=call_id, gen=action.gen, index=0, text=action.text, last=True))
            self._stamp_request(action.gen, False)
            self._record({"event": "speak", "gen": action.gen, "text": action.text})
        elif isinstance(action, HangUp):
            self.hangup_reason = action.reason
            log.info("call %s: hanging up (%s)", call_id, action.reason)
            self._hang_up(action.reason)
        elif isinstance(action, Note):
            log.info("call %s gen %d: %s%s", call_id, action.gen, action.what,
                     f": {action.detail!r}" if action.detail else "")
            self._record({"event": "note", "what": action.what, "gen": action.gen, "detail": action.detail})
            if action.what == "barge-in" and self.turn.onset:
                self.stamp(action.gen, "speech_onset", self.turn.onset)
                self.stamp(action.gen, "barge_in_heard", self.turn.heard)

    def _stamp_request(self, gen: int, answers_caller: bool) -> None:
        turn = self.turn
        if answers_caller:
            for stage, t_ns in (("speech_end", turn.speech_end), ("end_of_turn", turn.end_of_turn),
                                ("transcript", turn.transcript)):
                if t_ns:
                    self.stamp(gen, stage, t_ns)
        self.stamp(gen, "reply_requested", time.monotonic_ns())
