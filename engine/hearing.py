"""The speech process's logic, with no rings, sockets or threads: audio in, bus messages out.

`Hearing` keeps one `CallEar` per call: its audio history on the call's sample
clock, its VAD stream and its endpointer. `vad_round()` runs one batched VAD
inference over every call that has a window ready and turns the endpointer's
events into messages and transcription jobs. Transcription is speculative: a
job starts at the first `Pause` of a turn; if the turn ends with no more speech,
that job's result is the final transcript, so the end-of-turn silence hides it.
Jobs run elsewhere (a worker thread in the process); `finished()` takes results.
A pause's transcript is published as soon as it is ready, provisionally (`final=False`),
so the reply can start before the turn is over; `SpeechResumed` voids it if the caller
goes on, and the end of the turn confirms it with the final transcript.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from engine.config import SpeechSection
from engine.endpointer import Endpoint, Endpointer, Event, Onset, Pause, Resumed, Sustained
from engine.vad import WINDOW, SileroVad, VadStream
from ipc.schema import EndOfTurn, Msg, SpeechResumed, SpeechStarted, SpeechSustained, Transcript

Float32 = npt.NDArray[np.float32]


@dataclass
class Job:
    """Transcribe samples [start, end) of a call's turn."""

    call_id: str
    turn: int
    start: int
    end: int
    audio: Float32
    speech_end_t_ns: int
    speculative: bool
    final: bool = False  # the turn is confirmed over: publish the result
    cancelled: bool = False
    published: bool = False  # as the turn's final transcript
    provisional_sent: bool = False  # as a pause's provisional transcript
    text: str | None = None  # set by the worker when done
    stt_ms: int = 0


class AudioHistory:
    """The last `seconds` of a call's audio, addressed by absolute sample index.

    A preallocated circular buffer: appending a 20 ms frame costs the frame, not the
    history (a concatenating buffer copied all 32 s on every frame: 6x the VAD's cost).
    """

    def __init__(self, rate: int, seconds: float) -> None:
        self.capacity = int(rate * seconds)
        self._buf = np.zeros(self.capacity, np.float32)
        self.end = 0  # absolute index one past the newest sample

    @property
    def start(self) -> int:
        """Oldest absolute index still held."""
        return max(0, self.end - self.capacity)

    def append(self, samples: Float32) -> None:
        n = len(samples)
        if n >= self.capacity:
            samples, self.end = samples[-self.capacity:], self.end + n - self.capacity
            n = self.capacity
        at = self.end % self.capacity
        first = min(n, self.capacity - at)
        self._buf[at:at + first] = samples[:first]
        self._buf[:n - first] = samples[first:]
        self.end += n

    def range(self, start: int, end: int) -> Float32:
        """Samples [start, end), clipped to what is held; always a copy."""
        start, end = max(start, self.start), min(end, self.end)
        if end <= start:
            return np.zeros(0, np.float32)
        a, b = start % self.capacity, end % self.capacity
        if a < b or b == 0:
            return self._buf[a:b or self.capacity].copy()
        return np.concatenate([self._buf[a:], self._buf[:b]])


@dataclass
class CallEar:
    """One call in the speech process: its audio history, VAD state, endpointer and transcription jobs."""

    call_id: str
    rate: int
    endpointer: Endpointer
    history: AudioHistory
    vad: VadStream
    next_window: int = 0  # absolute index of the next sample to run VAD on
    turn: int = 0
    last_t_ns: int = 0  # arrival time of the newest audio
    speculative: Job | None = None
    jobs: list[Job] = field(default_factory=list)

    def t_ns_of(self, sample: int) -> int:
        """When sample `sample` arrived, from the newest frame's arrival time."""
        return self.last_t_ns - (self.history.end - sample) * 1_000_000_000 // self.rate

    def window_ready(self) -> bool:
        return self.history.end - self.next_window >= WINDOW[self.rate]


class Hearing:
    """Every call's ears in the speech process: audio in, batched VAD rounds, bus messages and jobs out."""

    def __init__(self, vad: SileroVad, speech: SpeechSection, rate: int, *, barge_in_ms: int = 0) -> None:
        self.vad = vad
        self.speech = speech
        self.barge_in_ms = barge_in_ms
        self.rate = rate
        self.history_s = speech.max_turn_s + 2.0
        self.ears: dict[str, CallEar] = {}
        self.pending_jobs: list[Job] = []
        self.vad_batches = 0
        self.vad_windows = 0

    def add_call(self, call_id: str) -> None:
        endpointer = Endpointer(self.speech, self.rate, barge_in_ms=self.barge_in_ms)
        self.ears[call_id] = CallEar(call_id, self.rate, endpointer,
                                     AudioHistory(self.rate, self.history_s), VadStream(self.rate))

    def end_call(self, call_id: str) -> None:
        ear = self.ears.pop(call_id, None)
        if ear is not None:
            for job in ear.jobs:
                job.cancelled = True

    def add_audio(self, call_id: str, pcm16: bytes, t_ns: int) -> None:
        ear = self.ears.get(call_id)
        if ear is None:  # its CallEnded was handled already (e.g. the same call id re-leased elsewhere)
            return
        ear.history.append(np.frombuffer(pcm16, np.int16).astype(np.float32) * (1 / 32768))
        ear.last_t_ns = t_ns

    def vad_round(self) -> list[Msg]:
        """One batched inference over every call with a window ready; the messages it leads to."""
        ready = [ear for ear in self.ears.values() if ear.window_ready()]
        if not ready:
            return []
        n = WINDOW[self.rate]
        windows = np.stack([ear.history.range(ear.next_window, ear.next_window + n) for ear in ready])
        probs = self.vad.infer(windows, [ear.vad for ear in ready])
        self.vad_batches += 1
        self.vad_windows += len(ready)
        out: list[Msg] = []
        for ear, prob in zip(ready, probs, strict=True):
            start = ear.next_window
            ear.next_window += n
            for event in ear.endpointer.feed(float(prob), start, n):
                out += self._on_event(ear, event)
        return out

    def _on_event(self, ear: CallEar, event: Event) -> list[Msg]:
        if isinstance(event, Onset):
            ear.turn += 1
            return [SpeechStarted(call_id=ear.call_id, turn=ear.turn, onset_t_ns=ear.t_ns_of(event.start))]
        if isinstance(event, Sustained):
            return [SpeechSustained(call_id=ear.call_id, turn=ear.turn)]
        if isinstance(event, Pause):
            ear.speculative = self._job(ear, event.start, event.end, speculative=True)
            return []
        if isinstance(event, Resumed):
            spec, ear.speculative = ear.speculative, None
            if spec is None:
                return []
            spec.cancelled = True
            return [SpeechResumed(call_id=ear.call_id, turn=ear.turn)] if spec.provisional_sent else []
        if isinstance(event, Endpoint):
            spec, ear.speculative = ear.speculative, None
            end_t_ns = ear.t_ns_of(event.end)
            msgs: list[Msg] = [EndOfTurn(call_id=ear.call_id, turn=ear.turn, speech_end_t_ns=end_t_ns)]
            if spec is not None and (spec.start, spec.end) == (event.start, event.end) and not spec.cancelled:
                spec.final = True
                msgs += self.finished(spec)  # if it finished during the silence, the transcript is ready now
            else:
                if spec is not None:
                    spec.cancelled = True
                self._job(ear, event.start, event.end, speculative=False).final = True
            return msgs
        return []

    def _job(self, ear: CallEar, start: int, end: int, *, speculative: bool) -> Job:
        job = Job(ear.call_id, ear.turn, start, end, ear.history.range(start, end), ear.t_ns_of(end), speculative)
        ear.jobs = [j for j in ear.jobs if j.text is None and not j.cancelled] + [job]
        self.pending_jobs.append(job)
        return job

    def take_jobs(self) -> list[Job]:
        jobs, self.pending_jobs = [j for j in self.pending_jobs if not j.cancelled], []
        return jobs

    def finished(self, job: Job) -> list[Msg]:
        """A job's transcription is done (job.text set): the turn's final transcript if its turn is over, else a
        pause's provisional one (once, and only with words in it)."""
        if job.cancelled or job.text is None or job.call_id not in self.ears:
            return []
        if job.final:
            if job.published:
                return []
            job.published = True
            return [self._transcript(job, final=True)]
        if job.speculative and not job.provisional_sent and job.text.strip():
            job.provisional_sent = True
            return [self._transcript(job, final=False)]
        return []

    def _transcript(self, job: Job, final: bool) -> Transcript:
        return Transcript(call_id=job.call_id, turn=job.turn, text=job.text or "", final=final,
                          speech_end_t_ns=job.speech_end_t_ns, audio_ms=len(job.audio) * 1000 // self.rate,
                          stt_ms=job.stt_ms, speculative=job.speculative, t_ns=time.monotonic_ns())
