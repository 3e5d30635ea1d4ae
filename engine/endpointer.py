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

GOING_ON_MS = 400
"""Speech that starts this soon after a turn was taken as over is the caller going on, not answering the bot: no
one reacts to a reply within that (it begins ~20-130 ms after the turn ends)."""


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
        self.caller_pause_ms = 0.0  # the longest silence this caller talked on after (`speech.caller_pause_margin_ms`)
        self._ended_at: int | None = None  # the sample where the last turn ended (its silence began at _silence_start)
        self._now = 0  # the end of the last window fed
        self._judged_unfinished = False  # the current pause was given longer by `wait_for`
        self._went_on_from: int | None = None  # where the silence the caller has just talked on after began
        self.end_silence_ms = cfg.end_silence_ms  # for the current pause, once it is judged
        self.pause_ms = cfg.pause_ms  # silence before a `Pause`

    def _ms(self, samples: int) -> float:
        return samples * 1000 / self.rate

    def base_silence_ms(self) -> int:
        """The silence that ends this caller's turn unless a pause is judged: `speech.end_silence_ms`, or longer for a
        caller who has gone on after a longer one (their longest such silence plus `speech.caller_pause_margin_ms`,
        at most `speech.turn_incomplete_ms`)."""
        cfg = self.cfg
        if not cfg.caller_pause_margin_ms or not self.caller_pause_ms:
            return cfg.end_silence_ms
        learned = min(cfg.turn_incomplete_ms, round(self.caller_pause_ms) + cfg.caller_pause_margin_ms)
        return max(cfg.end_silence_ms, learned)

    def _went_on_after(self, silence_start: int, speech_start: int) -> None:
        """The caller talked again `speech_start` after a silence that began at `silence_start`, with no turn of
        the bot's between: they pause that long mid-thought."""
        self.caller_pause_ms = max(self.caller_pause_ms, self._ms(speech_start - silence_start))
        self.end_silence_ms = max(self.end_silence_ms, self.base_silence_ms())

    def _begin(self) -> int:
        return max(0, self._start - self.cfg.prefix_pad_ms * self.rate // 1000)

    def feed(self, prob: float, window_start: int, window_len: int) -> list[Event]:
        """One VAD window [window_start, window_start + window_len) with its speech probability."""
        cfg = self.cfg
        self._now = window_start + window_len
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
                    if self._ended_at is not None and self._ms(self._start - self._ended_at) <= GOING_ON_MS:
                        self._went_on_after(self._silence_start, self._start)  # the turn was not over
                    self._ended_at = None
        elif self.phase == "speech":
            if silence:
                self.phase, self._silence_start, self._went_on_from = "silence", window_start, None
            elif self._went_on_from is not None and self._ms(end - self._run_start) >= cfg.min_speech_ms:
                self._went_on_after(self._went_on_from, self._run_start)
                self._went_on_from = None
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
            # Learnt once the speech lasts `min_speech_ms` (a click is not the caller going on); a pause after
            # "for", say, tells nothing of the caller's pauses.
            self._went_on_from = None if self._judged_unfinished else self._silence_start
            self._judged_unfinished = False
            self.end_silence_ms = self.base_silence_ms()
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
            self._reset(ended_at=end)
        return events

    def end_now(self) -> Endpoint | None:
        """The current pause is the end of the turn (judged finished): its `Endpoint` now, if still paused."""
        if self.phase != "silence" or not self._paused:
            return None
        event = Endpoint(self._begin(), self._silence_start)
        self._reset(ended_at=self._now)
        return event

    def wait_for(self, silence_ms: int) -> None:
        """The current pause may be mid-sentence: end the turn only after `silence_ms` of silence."""
        if self.phase == "silence" and self._paused:
            self.end_silence_ms = max(silence_ms, self.end_silence_ms)
            self._judged_unfinished = True

    def _reset(self, ended_at: int | None = None) -> None:
        """A turn is over (forced at `max_turn_s`: `ended_at` None, as a caller cut off there has not paused)."""
        # A turn a judgement had already lengthened teaches nothing either (see `_in_silence`).
        self._ended_at = None if self._judged_unfinished else ended_at
        self.phase = "idle"
        self._paused = self._judged_unfinished = False
        self.end_silence_ms = self.base_silence_ms()
