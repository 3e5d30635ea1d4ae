"""When the caller starts and stops talking: a pure state machine over VAD probabilities.

Fed one speech probability per VAD window, it answers with events on the call's
sample clock (absolute sample index since the call started):

- `SpeechStarted` once speech has lasted `min_speech_ms`: short clicks and coughs
  never start a turn. Used for barge-in, so it must come fast (~2-3 windows).
- `SpeechSustained` once speech has gone on for `sustained_ms` without a silence (if
  that is longer than `min_speech_ms`): long enough to interrupt the bot.
- `Pause` when silence has lasted `pause_ms`: the turn may be over, so the
  speech process starts transcribing now and keeps the result if no speech follows.
- `Resumed` when speech comes back after a `Pause`: that speculative work is void.
- `EndOfTurn` when silence has lasted `end_silence_ms`, with the utterance's range
  (widened by `prefix_pad_ms` before the detected start).

Hysteresis: a window counts as speech at >= `threshold`, as silence below
`threshold - hysteresis`, and in between it continues whatever was going on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import msgspec


class EndpointerConfig(msgspec.Struct, frozen=True, kw_only=True):
    threshold: float = 0.5
    hysteresis: float = 0.15
    min_speech_ms: int = 64
    pause_ms: int = 200
    end_silence_ms: int = 500
    prefix_pad_ms: int = 200
    max_turn_s: float = 30.0
    sustained_ms: int = 0
    """If longer than min_speech_ms: also say when speech has gone on this long without a pause (barge-in)."""


@dataclass(frozen=True)
class SpeechStarted:
    start: int  # first sample of the speech


@dataclass(frozen=True)
class SpeechSustained:
    start: int  # the speech has lasted `sustained_ms` from here with no silence


@dataclass(frozen=True)
class Pause:
    start: int
    end: int  # the utterance so far, ending where the silence began


@dataclass(frozen=True)
class Resumed:
    pass


@dataclass(frozen=True)
class EndOfTurn:
    start: int
    end: int
    forced: bool = False  # cut at max_turn_s, not by silence


Event = SpeechStarted | SpeechSustained | Pause | Resumed | EndOfTurn
Phase = Literal["idle", "onset", "speech", "silence"]


class Endpointer:
    def __init__(self, cfg: EndpointerConfig, rate: int) -> None:
        self.cfg = cfg
        self.rate = rate
        self.phase: Phase = "idle"
        self._start = 0  # first sample of the (candidate) speech
        self._onset_samples = 0
        self._silence_start = 0
        self._paused = False
        self._run_start = 0  # where the current stretch of unbroken speech began
        self._sustained = False

    def _ms(self, samples: int) -> float:
        return samples * 1000 / self.rate

    def _begin(self) -> int:
        return max(0, self._start - self.cfg.prefix_pad_ms * self.rate // 1000)

    def feed(self, prob: float, window_start: int, window_len: int) -> list[Event]:
        """One VAD window [window_start, window_start + window_len) with its speech probability."""
        cfg = self.cfg
        speech = prob >= cfg.threshold
        silence = prob < cfg.threshold - cfg.hysteresis
        end = window_start + window_len
        events: list[Event] = []
        if self.phase == "idle":
            if speech:
                self.phase, self._start, self._onset_samples = "onset", window_start, window_len
                if self._ms(self._onset_samples) >= cfg.min_speech_ms:
                    self.phase = "speech"
                    events.append(SpeechStarted(self._start))
            self._run_start, self._sustained = window_start, False
        elif self.phase == "onset":
            if silence:
                self.phase = "idle"  # too short: a click, a cough, line noise
            else:
                self._onset_samples += window_len
                if self._ms(self._onset_samples) >= cfg.min_speech_ms:
                    self.phase = "speech"
                    events.append(SpeechStarted(self._start))
        elif self.phase == "speech":
            if silence:
                self.phase, self._silence_start = "silence", window_start
        elif self.phase == "silence":
            if speech:
                self.phase, self._run_start = "speech", window_start
                if self._paused:
                    self._paused = False
                    events.append(Resumed())
            else:
                quiet = self._ms(end - self._silence_start)
                if not self._paused and quiet >= cfg.pause_ms:
                    self._paused = True
                    events.append(Pause(self._begin(), self._silence_start))
                if quiet >= cfg.end_silence_ms:
                    events.append(EndOfTurn(self._begin(), self._silence_start))
                    self._reset()
        if self.phase == "speech" and not self._sustained and cfg.sustained_ms > cfg.min_speech_ms \
                and self._ms(end - self._run_start) >= cfg.sustained_ms:
            self._sustained = True
            events.append(SpeechSustained(self._run_start))
        if self.phase in ("speech", "silence") and self._ms(end - self._start) >= cfg.max_turn_s * 1000:
            events.append(EndOfTurn(self._begin(), end, forced=True))
            self._reset()
        return events

    def _reset(self) -> None:
        self.phase = "idle"
        self._paused = False
