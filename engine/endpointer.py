"""When the caller starts and stops talking: a pure state machine over VAD probabilities.

Fed one speech probability per VAD window, it answers with events on the call's
sample clock (absolute sample index since the call started). They are the
speech process's own findings; `engine.hearing` turns them into the bus messages
of the same meaning (`SpeechStarted`, `SpeechSustained`, `EndOfTurn`), stamped
with arrival times instead of sample positions.

- `Onset` once speech has lasted `speech.min_speech_ms`: short clicks and coughs
  never start a turn. Must come fast (~2-3 windows).
- `Sustained` once speech has gone on for `barge_in_ms` without a silence: long
  enough to interrupt the bot. This is the one place that decides it: with a
  minimum no longer than `min_speech_ms`, it comes with the `Onset`. Once a turn.
- `Pause` when silence has lasted `pause_ms` (`speech.pause_ms`, or `speech.solo_pause_ms` while the call is
  the only one: `engine.hearing` sets it): the turn may be over, so the
  speech process starts transcribing now and keeps the result if no speech follows.
- `Resumed` when speech comes back after a `Pause`: that speculative work is void.
- `Endpoint` when silence has lasted `speech.end_silence_ms`, with the utterance's
  range (widened by `speech.prefix_pad_ms` before the detected start). Once a pause is
  judged (by the turn model and the transcript), `end_now` ends a finished turn at
  once, and `wait_for` gives an unfinished one longer.

Hysteresis: a window counts as speech at >= `vad_threshold`, as silence below
`vad_threshold - vad_hysteresis`, and in between it continues whatever was going on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from engine.config import SpeechSection


@dataclass(frozen=True)
class Onset:
    """Speech that lasted long enough to start a turn began at sample `start`."""

    start: int


@dataclass(frozen=True)
class Sustained:
    """Speech has lasted the barge-in minimum from sample `start` with no silence."""

    start: int


@dataclass(frozen=True)
class Pause:
    """Silence long enough to start transcribing: the utterance so far is [start, end)."""

    start: int
    end: int


@dataclass(frozen=True)
class Resumed:
    """Speech came back after a `Pause`: work started on that pause is void."""


@dataclass(frozen=True)
class Endpoint:
    """The turn is over: the utterance is samples [start, end)."""

    start: int
    end: int
    forced: bool = False  # cut at max_turn_s, not by silence


Event = Onset | Sustained | Pause | Resumed | Endpoint
Phase = Literal["idle", "onset", "speech", "silence"]


class Endpointer:
    """One call's endpointing: `feed` a window's speech probability, get the events it completes."""

    def __init__(self, cfg: SpeechSection, rate: int, *, barge_in_ms: int = 0) -> None:
        self.cfg = cfg
        self.rate = rate
        self.barge_in_ms = barge_in_ms
        self.phase: Phase = "idle"
        self._start = 0  # first sample of the (candidate) speech
        self._onset_samples = 0
        self._silence_start = 0
        self._paused = False
        self._run_start = 0  # where the current stretch of unbroken speech began
        self._sustained = False
        self.end_silence_ms = cfg.end_silence_ms  # for the current pause, once it is judged
        self.pause_ms = cfg.pause_ms  # silence before a `Pause`

    def _ms(self, samples: int) -> float:
        return samples * 1000 / self.rate

    def _begin(self) -> int:
        return max(0, self._start - self.cfg.prefix_pad_ms * self.rate // 1000)

    def feed(self, prob: float, window_start: int, window_len: int) -> list[Event]:
        """One VAD window [window_start, window_start + window_len) with its speech probability."""
        cfg = self.cfg
        speech = prob >= cfg.vad_threshold
        silence = prob < cfg.vad_threshold - cfg.vad_hysteresis
        end = window_start + window_len
        events: list[Event] = []
        if self.phase == "idle":
            if speech:
                self.phase, self._start, self._onset_samples = "onset", window_start, 0
            self._run_start, self._sustained = window_start, False
        if self.phase == "onset":
            if silence:
                self.phase = "idle"  # too short: a click, a cough, line noise
            else:
                self._onset_samples += window_len
                if self._ms(self._onset_samples) >= cfg.min_speech_ms:
                    self.phase = "speech"
                    events.append(Onset(self._start))
        elif self.phase == "speech":
            if silence:
                self.phase, self._silence_start = "silence", window_start
        elif self.phase == "silence":
            events += self._in_silence(speech, window_start, end)
        if self.phase == "speech" and not self._sustained and self._ms(end - self._run_start) >= self.barge_in_ms:
            self._sustained = True
            events.append(Sustained(self._run_start))
        if self.phase in ("speech", "silence") and self._ms(end - self._start) >= cfg.max_turn_s * 1000:
            events.append(Endpoint(self._begin(), end, forced=True))
            self._reset()
        return events

    def _in_silence(self, speech: bool, window_start: int, end: int) -> list[Event]:
        if speech:
            self.phase, self._run_start = "speech", window_start
            self.end_silence_ms = self.cfg.end_silence_ms
            if self._paused:
                self._paused = False
                return [Resumed()]
            return []
        events: list[Event] = []
        quiet = self._ms(end - self._silence_start)
        if not self._paused and quiet >= self.pause_ms:
            self._paused = True
            events.append(Pause(self._begin(), self._silence_start))
        if quiet >= self.end_silence_ms:
            events.append(Endpoint(self._begin(), self._silence_start))
            self._reset()
        return events

    def end_now(self) -> Endpoint | None:
        """The current pause is the end of the turn (judged finished): its `Endpoint` now, if still paused."""
        if self.phase != "silence" or not self._paused:
            return None
        event = Endpoint(self._begin(), self._silence_start)
        self._reset()
        return event

    def wait_for(self, silence_ms: int) -> None:
        """The current pause may be mid-sentence: end the turn only after `silence_ms` of silence."""
        if self.phase == "silence" and self._paused:
            self.end_silence_ms = silence_ms

    def _reset(self) -> None:
        self.phase = "idle"
        self._paused = False
        self.end_silence_ms = self.cfg.end_silence_ms
