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

Each pause is also judged (a `turn` job: Smart Turn on the turn's audio). When the
turn model scores it finished and its transcript ends a sentence, the turn ends at
once; scored unfinished, the caller may pause up to `speech.turn_incomplete_ms`
before it ends; otherwise `speech.end_silence_ms` of silence ends it.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from engine.codec import StreamResampler
from engine.config import SpeechSection
from engine.endpointer import Endpoint, Endpointer, Event, Onset, Pause, Resumed, Sustained
from engine.stt import SAMPLE_RATE
from engine.vad import WINDOW, SileroVad, VadStream
from ipc.schema import EndOfTurn, Msg, SpeechResumed, SpeechStarted, SpeechSustained, Transcript

Float32 = npt.NDArray[np.float32]


@dataclass
class Job:
    """Transcribe samples [start, end) of a call's turn; with `judge`, score instead whether it sounds finished."""

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
    stt_start_t_ns: int = 0  # when the worker began on it
    judge: bool = False  # a turn job: does the turn so far sound finished?
    judged: bool = False  # a pause's transcript job whose verdict was drawn
    complete: float | None = None  # a turn job's result: the probability the turn is finished


SENTENCE_END = (".", "?", "!")
UNFINISHED_ENDINGS = frozenset({
    "a", "an", "the", "and", "but", "or", "so", "because", "to", "for", "with", "of", "in", "on", "at", "from",
    "by", "about", "my", "your", "our", "their", "his", "her", "its", "is", "are", "was", "were", "i", "we", "you",
    "um", "uh", "er", "that", "which", "who", "if", "when", "than", "then",
})


def reads_as_finished(text: str) -> bool:
    """Whether a transcript reads as a finished sentence: it ends one (. ? !), and not on a word that cannot end
    one ("I'd like to book a table for.")."""
    words = re.findall(r"[\w']+", text.lower())
    return text.rstrip().endswith(SENTENCE_END) and bool(words) and words[-1] not in UNFINISHED_ENDINGS


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
    upsampler: StreamResampler  # the ring's rate -> `rate` (identity at 16 kHz)
    next_window: int = 0  # absolute index of the next sample to run VAD on
    turn: int = 0
    last_t_ns: int = 0  # arrival time of the newest audio
    speculative: Job | None = None
    judging: Job | None = None  # the current pause's turn job
    jobs: list[Job] = field(default_factory=list)

    def t_ns_of(self, sample: int) -> int:
        """When sample `sample` arrived, from the newest frame's arrival time."""
        return self.last_t_ns - (self.history.end - sample) * 1_000_000_000 // self.rate

    def window_ready(self) -> bool:
        return self.history.end - self.next_window >= WINDOW[self.rate]


class Hearing:
    """Every call's ears in the speech process: audio in, batched VAD rounds, bus messages and jobs out."""

    def __init__(self, vad: SileroVad, speech: SpeechSection, rate: int, *, barge_in_ms: int = 0) -> None:
        """`rate`: the inbound rings' (`transport.inbound_rate`). Each call is heard at 16 kHz whatever it is (the VAD,
        Whisper and Smart Turn all take 16 kHz): 8 kHz audio is resampled here, a pass's frames at once."""
        self.vad = vad
        self.speech = speech
        self.barge_in_ms = barge_in_ms
        self.ring_rate = rate
        self.rate = SAMPLE_RATE
        self.history_s = speech.max_turn_s + 2.0
        self.ears: dict[str, CallEar] = {}
        self.pending_jobs: list[Job] = []
        self.vad_batches = 0
        self.vad_windows = 0
        self.verdicts = {"finished": 0, "unfinished": 0, "undecided": 0}

    def add_call(self, call_id: str) -> None:
        endpointer = Endpointer(self.speech, self.rate, barge_in_ms=self.barge_in_ms)
        self.ears[call_id] = CallEar(call_id, self.rate, endpointer,
                                     AudioHistory(self.rate, self.history_s), VadStream(self.rate),
                                     StreamResampler(self.ring_rate, self.rate))
        self._set_pauses()

    def end_call(self, call_id: str) -> None:
        ear = self.ears.pop(call_id, None)
        if ear is not None:
            for job in ear.jobs:
                job.cancelled = True
        self._set_pauses()

    def _set_pauses(self) -> None:
        """A call alone is transcribed at a shorter pause (`speech.solo_pause_ms`); once others join, every call
        waits `speech.pause_ms`, so that pauses the caller talks on after cost the box no work."""
        pause_ms = self.speech.solo_pause_ms if len(self.ears) == 1 else self.speech.pause_ms
        for ear in self.ears.values():
            ear.endpointer.pause_ms = pause_ms

    def add_audio(self, call_id: str, pcm16: bytes, t_ns: int) -> None:
        ear = self.ears.get(call_id)
        if ear is None:  # its CallEnded was handled already (e.g. the same call id re-leased elsewhere)
            return
        ear.history.append(ear.upsampler.process_float(np.frombuffer(pcm16, np.int16)))
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
            if self.speech.turn_model != "off":
                # Judged on the turn with the pause's silence after it, as the model was trained.
                ear.judging = self._job(ear, event.start, ear.next_window, speculative=True, judge=True)
            ear.speculative = self._job(ear, event.start, event.end, speculative=True)
            return []
        if isinstance(event, Resumed):
            self._drop_judging(ear)
            spec, ear.speculative = ear.speculative, None
            if spec is None:
                return []
            spec.cancelled = True
            return [SpeechResumed(call_id=ear.call_id, turn=ear.turn)] if spec.provisional_sent else []
        if isinstance(event, Endpoint):
            self._drop_judging(ear)
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

    @staticmethod
    def _drop_judging(ear: CallEar) -> None:
        """The pause is over (speech came back, or the turn ended): its turn job's verdict is moot."""
        if ear.judging is not None:
            ear.judging.cancelled = True
            ear.judging = None

    def _job(self, ear: CallEar, start: int, end: int, *, speculative: bool, judge: bool = False) -> Job:
        # A transcript's audio runs on past where the silence began (speech.suffix_pad_ms, as far as it has come):
        # the ends of weak last sounds are under the VAD's threshold. The turn's end stays where the speech stopped.
        upto = end if judge else min(end + self.speech.suffix_pad_ms * self.rate // 1000, ear.history.end)
        audio = ear.history.range(start, upto)
        job = Job(ear.call_id, ear.turn, start, end, audio, ear.t_ns_of(end), speculative, judge=judge)
        ear.jobs = [j for j in ear.jobs if j.text is None and not j.cancelled] + [job]
        self.pending_jobs.append(job)
        return job

    def take_jobs(self) -> list[Job]:
        jobs, self.pending_jobs = [j for j in self.pending_jobs if not j.cancelled], []
        return jobs

    def finished(self, job: Job) -> list[Msg]:
        """A job is done (job.text or job.complete set): the turn's final transcript if its turn is over, else a
        pause's provisional one (once, and only with words in it); and whatever the pause's verdict decides."""
        ear = self.ears.get(job.call_id)
        if job.cancelled or ear is None:
            return []
        if job.judge:
            return self._judge(ear) if job.complete is not None else []
        if job.text is None:
            return []
        if job.final:
            if job.published:
                return []
            job.published = True
            return [self._transcript(job, final=True)]
        if job.speculative and not job.provisional_sent and job.text.strip():
            job.provisional_sent = True
            return [self._transcript(job, final=False), *self._judge(ear)]
        return self._judge(ear)

    def _judge(self, ear: CallEar) -> list[Msg]:
        """Once the pause's transcript (and, with the turn model on, its score) is in: end a turn that sounds and
        reads finished now; give one that sounds or reads unfinished longer; else the end-of-turn silence decides."""
        spec = ear.speculative
        if spec is None or spec.text is None or spec.judged:
            return []
        score = None
        if self.speech.turn_model != "off":
            if ear.judging is None or ear.judging.complete is None:
                return []
            score = ear.judging.complete
        spec.judged, ear.judging = True, None
        threshold = self.speech.turn_complete_threshold
        reads_finished = reads_as_finished(spec.text)
        if score is not None and score >= threshold and reads_finished:
            self.verdicts["finished"] += 1
            event = ear.endpointer.end_now()
            return self._on_event(ear, event) if event is not None else []
        if not reads_finished or (score is not None and score < threshold):
            self.verdicts["unfinished"] += 1
            ear.endpointer.wait_for(self.speech.turn_incomplete_ms)
        else:
            self.verdicts["undecided"] += 1
        return []

    def _transcript(self, job: Job, final: bool) -> Transcript:
        return Transcript(call_id=job.call_id, turn=job.turn, text=job.text or "", final=final,
                          speech_end_t_ns=job.speech_end_t_ns, audio_ms=len(job.audio) * 1000 // SAMPLE_RATE,
                          stt_ms=job.stt_ms, speculative=job.speculative, stt_start_t_ns=job.stt_start_t_ns,
                          t_ns=time.monotonic_ns())
