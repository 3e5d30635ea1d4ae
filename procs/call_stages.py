"""One call's latency stages in the trace and in /metrics: when the caller's turn passed each, and its reply's.

The speech process says when the caller started and stopped speaking and when the
words were ready; the transport knows when a reply was asked for, committed, and
first sounded, and when a barge-in's `clear` went. `CallStages` keeps the caller's
latest turn until its reply is asked for, stamps each stage into the trace
(engine.trace) and observes the turn's figures in the metrics (engine.metrics)
and in admission (engine.admission), which judges the load by them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ipc.schema import EndOfTurn, SpeechStarted, Transcript
from procs.transport_shared import TransportShared


@dataclass
class TurnTimes:
    """When the caller's latest turn passed each speech stage (monotonic ns), kept until its reply is asked for."""

    speech_end: int = 0
    end_of_turn: int = 0
    transcript: int = 0
    stt_start: int = 0
    onset: int = 0
    heard: int = 0


class CallStages:
    """The trace stages and turn metrics of one call."""

    def __init__(self, shared: TransportShared, call_id: str) -> None:
        self.shared = shared
        self.call_id = call_id
        self.turn = TurnTimes()
        self._answering: dict[int, int] = {}  # reply gen -> when the caller stopped speaking, until it sounds
        self._barge_in_onset = 0  # the speech onset of a barge-in whose `clear` is still to go

    def caller(self, msg: SpeechStarted | EndOfTurn | Transcript) -> None:
        """The speech process's word on the caller's turn."""
        if isinstance(msg, SpeechStarted):
            self.turn = TurnTimes(onset=msg.onset_t_ns, heard=time.monotonic_ns())
        elif isinstance(msg, EndOfTurn):
            self.turn.speech_end, self.turn.end_of_turn = msg.speech_end_t_ns, msg.t_ns
        else:  # provisional (at a pause) or final: a reply asked for now answers it
            self.turn.transcript, self.turn.speech_end = msg.t_ns, msg.speech_end_t_ns
            self.turn.stt_start = msg.stt_start_t_ns

    def requested(self, gen: int, answers_caller: bool, provisional: bool = False) -> None:
        """Reply `gen` was asked for: for the caller's turn (`answers_caller`), or a line of the bot's own."""
        turn = self.turn
        now_ns = time.monotonic_ns()
        if answers_caller:
            if turn.speech_end:
                self._answering[gen] = turn.speech_end
            for stage, t_ns in (("speech_end", turn.speech_end), ("end_of_turn", turn.end_of_turn),
                                ("stt_start", turn.stt_start), ("transcript", turn.transcript)):
                if t_ns and not (provisional and stage == "end_of_turn"):
                    self.stamp(gen, stage, t_ns)
            if not provisional:  # a provisional reply's turn counts when it is committed
                self._turn_metrics(now_ns)
        self.stamp(gen, "reply_requested", now_ns)
        if provisional:
            self.stamp(gen, "reply_provisional", now_ns)

    def committed(self, gen: int) -> None:
        """Provisional reply `gen` answers the turn as it ended."""
        if self.turn.end_of_turn:
            self.stamp(gen, "end_of_turn", self.turn.end_of_turn)
        now_ns = time.monotonic_ns()
        self.stamp(gen, "reply_committed", now_ns)
        self._turn_metrics(now_ns)

    def barge_in(self, gen: int) -> None:
        """The caller's speech cut reply `gen` short; its `clear` is on its way."""
        if self.turn.onset:
            self._barge_in_onset = self.turn.onset
            self.stamp(gen, "speech_onset", self.turn.onset)
            self.stamp(gen, "barge_in_heard", self.turn.heard)

    def cleared(self, gen: int) -> None:
        """The `clear` for reply `gen` was sent."""
        sent_ns = time.monotonic_ns()
        self.stamp(gen, "clear_sent", sent_ns)
        if self._barge_in_onset:
            self.shared.metrics.barge_in((sent_ns - self._barge_in_onset) / 1e9)
            self._barge_in_onset = 0

    def sounded(self, gen: int) -> None:
        """Reply `gen`'s first audio was sent to the caller."""
        shared = self.shared
        now_ns = time.monotonic_ns()
        self.stamp(gen, "first_audio_out", now_ns)
        if (speech_end := self._answering.pop(gen, None)) is not None:
            shared.admission.reply((now_ns - speech_end) / 1e6, len(shared.calls))
            shared.metrics.reply_sounded((now_ns - speech_end) / 1e9)
            shared.metrics.stage("first_audio_out", (now_ns - speech_end) / 1e9)
        self._answering = {g: t for g, t in self._answering.items() if g > gen}  # superseded: never sound

    def _turn_metrics(self, requested_ns: int) -> None:
        """A caller's turn is answered: it counts, with when each of its stages came after the speech end."""
        metrics, turn = self.shared.metrics, self.turn
        metrics.turn()
        if turn.speech_end:
            for stage, t_ns in (("end_of_turn", turn.end_of_turn), ("transcript", turn.transcript),
                                ("reply_requested", requested_ns)):
                if t_ns:
                    metrics.stage(stage, (t_ns - turn.speech_end) / 1e9)

    def stamp(self, gen: int, stage: str, t_ns: int) -> None:
        if self.shared.trace is not None:
            self.shared.trace.add(self.call_id, gen, stage, t_ns)
