"""`python -m engine dial`: call a running engine as Twilio would, and print the call as it happens.

    python -m engine dial --say "What is the capital of France?" --say "And of Spain?"
    python -m engine dial --url https://voice.example.com --wav question.wav --out call.wav

The caller is tools/caller.py's SyntheticCaller, speaking each `--say` in Piper's voice and playing each
`--wav`, in order, on a line that carries silence in between, as a phone line does. It reaches the engine
the way the configuration allows: with `twilio.auth_token` and `transport.public_url` set, as Twilio does
(a signed voice webhook, then the TwiML's Media Stream), which makes it a deploy's smoke test; otherwise
through the engine's playground (a token from `POST /playground/token`, then `/playground/stream`).

Each turn waits for the reply to end before the next is spoken (the greeting too). What the engine heard
and said comes from `GET /calls/<sid>/transcript`, polled while the call runs; the voice-to-voice time is
measured here, at the caller: from the end of its speech to the bot's first audio after it. Both sides of
the call go to a stereo WAV: left what the caller sent, right what it heard, 8 kHz, on the call's clock.

Exit status 0 when the engine heard something in every turn and answered it; 1 when a turn did not (each
failure named on stderr); 2 when the engine could not be reached or refused the call, or the input is unusable.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import sys
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from engine.codec import Pcm16, mulaw_to_pcm16
from engine.config import Config
from tools.caller import (
    FRAME_SAMPLES,
    LOUD,
    RATE,
    CallerError,
    StreamTarget,
    SyntheticCaller,
    TurnedAway,
    load_wav,
    piper_speech,
)

EXIT_OK, EXIT_FAILED, EXIT_REFUSED = 0, 1, 2
POLL_S = 0.25  # how often the transcript is read while a reply is awaited
QUIET_S = 1.0  # with no transcript to say so: no bot audio for this long, all of it played, and the reply is over
ENDED_WAIT_S = 5.0  # after hanging up, how long the transcript may take to say how the call ended
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=10)


class DialError(Exception):
    """The call could not be made: the engine is unreachable or refused it, or the input is unusable (exit 2)."""


@dataclass(frozen=True)
class Utterance:
    """One caller turn: what is shown for it, and its audio (8 kHz)."""

    shown: str
    pcm: Pcm16


@dataclass
class TurnResult:
    """What one turn (or the greeting) brought: the caller's words as the engine heard them, and the bot's replies."""

    heard: list[str] = field(default_factory=list)
    replies: list[dict[str, Any]] = field(default_factory=list)
    first_audio: float | None = None  # when the bot's first audio after the caller's speech arrived


@dataclass
class Placed:
    """A call the engine took: the caller, the stream to open, and the headers that let it read the transcript."""

    caller: SyntheticCaller
    target: StreamTarget
    headers: dict[str, str]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--say", dest="turns", action="append", metavar="TEXT", type=lambda text: ("say", text),
                        help="a turn the caller speaks, in Piper's voice (repeatable; turns go in order)")
    parser.add_argument("--wav", dest="turns", action="append", metavar="FILE", type=lambda path: ("wav", path),
                        help="a turn the caller plays from a WAV file (repeatable, mixed with --say in order)")
    parser.add_argument("--url", help="where the engine listens (default: http://127.0.0.1:<transport.port>)")
    parser.add_argument("--out", metavar="FILE", help="the call's audio, stereo WAV (default: dial-<callsid>.wav)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds a reply (or the greeting) may take to come and end (default 30)")


def run_dial(cfg: Config, args: argparse.Namespace) -> int:
    """The `dial` command: synthesise the turns, place the call, follow it; the exit status."""
    try:
        if not args.turns:
            raise DialError("nothing to say: give at least one --say TEXT or --wav FILE")
        utterances = [utterance(kind, value) for kind, value in args.turns]
        base_url = (args.url or f"http://127.0.0.1:{cfg.transport.port}").rstrip("/")
        return asyncio.run(Dial(cfg, base_url, args.timeout).run(utterances, args.out))
    except DialError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED


def utterance(kind: str, value: str) -> Utterance:
    """A `--say` or `--wav` turn as audio, checked to hold speech (so its end can be found on the line)."""
    try:
        pcm = piper_speech(value) if kind == "say" else load_wav(value)
    except (CallerError, ImportError, OSError) as exc:
        raise DialError(f"cannot {'synthesise' if kind == 'say' else 'read'} {value!r}: {exc}") from exc
    frames = np.abs(pcm[:len(pcm) // FRAME_SAMPLES * FRAME_SAMPLES].astype(np.int32)).reshape(-1, FRAME_SAMPLES)
    if not len(frames) or frames.max() <= LOUD:
        raise DialError(f"{value!r} has no speech in it (no sample louder than {LOUD})")
    return Utterance(f'"{value}"' if kind == "say" else value, pcm)


def call_stereo(c: SyntheticCaller) -> np.ndarray:
    """Both sides of the call on its clock (from `start`): column 0 what the caller sent, column 1 what it heard."""
    assert c.started_at is not None
    sent = [(int(m["media"]["timestamp"]) * RATE // 1000, mulaw_to_pcm16(base64.b64decode(m["media"]["payload"])))
            for _, direction, m in c.events if direction == "out" and m.get("event") == "media"]
    heard = [(max(0, round((t - c.started_at) * RATE)), pcm) for t, pcm in c.heard]
    stereo = np.zeros((max((at + len(pcm) for at, pcm in sent + heard), default=0), 2), np.int16)
    for column, parts in ((0, sent), (1, heard)):
        for at, pcm in parts:
            stereo[at:at + len(pcm), column] = pcm
    return stereo


def write_stereo_wav(path: Path, stereo: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(stereo.astype("<i2").tobytes())


class TranscriptFeed:
    """The call's transcript as the engine keeps it (`GET /calls/<sid>/transcript`), read again and again.

    `fresh` hands out each entry once: the caller's words as they come, a bot reply once it has ended. When the
    engine will not serve it (an engine without the endpoint, or a remote one without the operator token),
    `unavailable` says why and the call is followed by its audio alone.
    """

    def __init__(self, http: aiohttp.ClientSession, base_url: str, call_sid: str, headers: dict[str, str]) -> None:
        self.http, self.url, self.headers = http, f"{base_url}/calls/{call_sid}/transcript", headers
        self.unavailable = ""
        self.live = True
        self.outcome: str | None = None
        self.playing = False  # a reply is still playing, as of the last read
        self._shown: set[str] = set()

    async def fresh(self) -> list[dict[str, Any]]:
        if self.unavailable:
            return []
        try:
            async with self.http.get(self.url, headers=self.headers, timeout=HTTP_TIMEOUT) as resp:
                if resp.status in (401, 403, 404):  # (the engine answers 404 to a client it will not show it to)
                    self.unavailable = (f"GET {self.url} answered HTTP {resp.status} (the transcript answers "
                                        "loopback clients, or Authorization: Bearer <transport.health_token>)")
                if resp.status != 200:
                    return []
                doc = await resp.json()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return []  # a hiccup: the next read may do
        self.live, self.outcome = bool(doc.get("live")), doc.get("outcome")
        turns = [e for e in doc.get("turns", []) if isinstance(e, dict)]
        self.playing = any(e.get("playing") for e in turns)
        new = []
        for entry in turns:
            if entry.get("speaker") == "bot" and (entry.get("playing") or entry.get("heard") is None):
                continue  # shown once it has ended, with what the caller heard of it
            key = f"bot {entry.get('gen')}" if entry.get("speaker") == "bot" else repr(sorted(entry.items()))
            if key not in self._shown:
                self._shown.add(key)
                new.append(entry)
        return new


class Dial:
    """One call: placed, greeted, its turns spoken and followed, hung up; prints as it goes, keeps what failed."""

    def __init__(self, cfg: Config, base_url: str, timeout_s: float,
                 show: Callable[[str], None] = lambda line: print(line, flush=True)) -> None:
        self.cfg, self.base_url, self.timeout_s, self.show = cfg, base_url, timeout_s, show
        self.failures: list[str] = []

    @property
    def as_twilio(self) -> bool:
        return bool(self.cfg.twilio.auth_token and self.cfg.transport.public_url)

    async def run(self, utterances: list[Utterance], out: str | None) -> int:
        async with aiohttp.ClientSession() as http:
            placed = await (self._as_twilio() if self.as_twilio else self._through_playground(http))
            c = placed.caller
            async with c:
                feed = TranscriptFeed(http, self.base_url, c.call_sid, placed.headers)
                try:
                    await self._connect(c, placed.target, feed)
                    for n, said in enumerate(utterances, 1):
                        if c.closed:
                            self.failures.append(f"turn {n}: not spoken, the engine had hung up")
                            continue
                        self._judge(f"turn {n}", await self._turn(c, feed, said), feed)
                    unavailable = feed.unavailable  # (an ended call's transcript may be gone: that is no matter)
                    await self._hang_up(c, feed)
                finally:
                    if c.started_at is not None:
                        path = Path(out or f"dial-{c.call_sid}.wav")
                        write_stereo_wav(path, call_stereo(c))
                        self.show(f"audio   {path} (stereo: left the caller, right the bot)")
        if unavailable:
            print(f"dial: what the engine heard and said is not shown: {unavailable}", file=sys.stderr)
        for failure in self.failures:
            print(f"dial: {failure}", file=sys.stderr)
        return EXIT_FAILED if self.failures else EXIT_OK

    # -- placing the call ---------------------------------------------------------------------------------

    async def _as_twilio(self) -> Placed:
        c = SyntheticCaller(self.base_url, public_url=self.cfg.transport.public_url,
                            auth_token=self.cfg.twilio.auth_token)
        self.show(f"dialing {self.base_url} as Twilio (call {c.call_sid})")
        try:
            target = await c.dial()
        except TurnedAway as exc:
            await c.close()
            raise DialError(f"the engine turned the call away: {exc}") from exc
        except CallerError as exc:
            await c.close()
            hint = (" (is twilio.auth_token the engine's, and transport.public_url the URL it signs?)"
                    if "HTTP 403" in str(exc) else "")
            raise DialError(f"the engine refused the call: {exc}{hint}") from exc
        except (aiohttp.ClientError, OSError) as exc:
            await c.close()
            raise DialError(f"cannot reach the engine at {self.base_url}: {exc}") from exc
        health_token = self.cfg.transport.health_token
        return Placed(c, target, {"Authorization": f"Bearer {health_token}"} if health_token else {})

    async def _through_playground(self, http: aiohttp.ClientSession) -> Placed:
        secret = self.cfg.playground.secret
        url = f"{self.base_url}/playground/token"
        try:
            async with http.post(url, headers={"Authorization": f"Bearer {secret}"} if secret else {},
                                 timeout=HTTP_TIMEOUT) as resp:
                body = await resp.text()
                if resp.status == 404:
                    raise DialError(f"the engine at {self.base_url} has no playground (POST {url}: HTTP 404): start "
                                    "it with ENGINE_PLAYGROUND__ENABLED=true, or set twilio.auth_token and "
                                    "transport.public_url (TWILIO_AUTH_TOKEN, ENGINE_TRANSPORT__PUBLIC_URL) here "
                                    "and there for dial to call it as Twilio does")
                if resp.status != 200:
                    raise DialError(f"the playground refused a token: HTTP {resp.status} {body[:300]!r}"
                                    + (" (from another host, set playground.secret)" if resp.status in (401, 403)
                                       else ""))
                grant = await resp.json(content_type=None)
                token, call_sid, stream_url = (str(grant[key]) for key in ("token", "call_sid", "stream_url"))
        except (aiohttp.ClientError, OSError) as exc:
            raise DialError(f"cannot reach the engine at {self.base_url}: {exc}") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise DialError(f"the playground's token answer is not what dial knows: {body[:300]!r}") from exc
        c = SyntheticCaller(self.base_url, public_url=self.base_url, auth_token="", call_sid=call_sid)
        self.show(f"dialing {self.base_url} through the playground (call {call_sid})")
        target = StreamTarget(url=stream_url, parameters={"token": token})
        return Placed(c, target, {"Authorization": f"Bearer {token}"})

    async def _connect(self, c: SyntheticCaller, target: StreamTarget, feed: TranscriptFeed) -> None:
        """Open the Media Stream and hear the greeting out; DialError when the engine will not take the stream."""
        try:
            await c.connect(target, continuous=True)
        except CallerError as exc:
            raise DialError(f"the engine refused the call's stream: {exc}") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise DialError(f"cannot reach the engine at {self.base_url}: {exc}") from exc
        if not self.cfg.conversation.greeting:
            return
        assert c.started_at is not None
        greeting = await self._follow(c, feed, c.started_at, "greeting")
        if c.closed and not c.received_media_times:
            raise DialError(f"the engine closed the call's stream at once (code {c.close_code}, "
                            f"reason {c.close_reason!r})")
        if greeting.first_audio is None:
            self.show(f"bot     no greeting within {self.timeout_s:g} s")

    # -- the turns ----------------------------------------------------------------------------------------

    async def _turn(self, c: SyntheticCaller, feed: TranscriptFeed, said: Utterance) -> TurnResult:
        assert c.started_at is not None
        sent_before = len(c.sent_media)
        try:
            await c.send_audio(said.pcm)
        except CallerError:  # the engine hung up while the caller spoke
            return TurnResult()
        start, end = c.speech_bounds(sent_before, said.pcm)
        self.show(f"caller  {start - c.started_at:.1f}-{end - c.started_at:.1f} s  said: {said.shown}")
        return await self._follow(c, feed, end)

    async def _follow(self, c: SyntheticCaller, feed: TranscriptFeed, since: float, what: str = "") -> TurnResult:
        """Show what the engine hears and says after `since` until its reply has ended (or the time is up); `what`
        the reply is, when it answers no speech (the greeting)."""
        result = TurnResult()
        deadline = since + self.timeout_s
        while time.monotonic() < deadline and not c.closed:
            if result.first_audio is None:
                result.first_audio = next((t for t, _ in c.received_media_times if t > since), None)
            for entry in await feed.fresh():
                self._show_entry(c, entry, result, since, what)
            if feed.unavailable:
                last = c.received_media_times[-1][0] if c.received_media_times else 0.0
                if result.first_audio is not None and c.playback.idle and time.monotonic() - last >= QUIET_S:
                    heard_s = sum(len(pcm) for t, pcm in c.heard if t >= result.first_audio) / RATE
                    self.show(f"bot     {self._when(c, result.first_audio, since, what)}: {heard_s:.1f} s of audio")
                    break
            elif result.replies and c.playback.idle and not feed.playing:
                break
            await asyncio.sleep(POLL_S)
        return result

    @staticmethod
    def _when(c: SyntheticCaller, first_audio: float, since: float, what: str) -> str:
        """When a reply's audio began on the call's clock, with what it was or how long after the caller's speech."""
        assert c.started_at is not None
        return f"{first_audio - c.started_at:.1f} s  " + (
            f"({what})" if what else f"(voice-to-voice {(first_audio - since) * 1000:.0f} ms)")

    def _show_entry(self, c: SyntheticCaller, entry: dict[str, Any], result: TurnResult, since: float,
                    what: str = "") -> None:
        assert c.started_at is not None
        if entry.get("speaker") == "caller":
            if "keypress" in entry:
                self.show(f"engine  heard key: {entry['keypress']}")
            elif entry.get("backchannel") or entry.get("ignored"):
                self.show(f'engine  heard, and let pass: "{entry.get("text", "")}"')
            else:
                result.heard.append(str(entry.get("text", "")))
                self.show(f'engine  heard: "{result.heard[-1]}"')
        elif entry.get("speaker") == "bot":
            first_audio = result.first_audio if not result.replies else None  # only the first reply's is known
            result.replies.append(entry)
            when = (f"{float(entry.get('t_s', 0.0)):.1f} s" if first_audio is None
                    else self._when(c, first_audio, since, what))
            self.show(f'bot     {when}: "{entry.get("said", "")}"')
            if entry.get("interrupted"):
                heard = f'heard only: "{entry["heard"]}"' if entry.get("heard") else "heard none of it"
                self.show(f'        {heard} ({entry.get("interrupted_by", "cut")})')
        elif "event" in entry:
            detail = next((str(entry[k]) for k in ("reason", "detail", "to") if k in entry), "")
            self.show(f"call    {entry['event']}" + (f": {detail}" if detail else ""))

    def _judge(self, turn: str, result: TurnResult, feed: TranscriptFeed) -> None:
        if feed.unavailable:
            if result.first_audio is None:
                self.failures.append(f"{turn}: no reply within {self.timeout_s:g} s")
            return
        if not any(result.heard):
            self.failures.append(f"{turn}: the engine heard nothing")
        if not result.replies:
            self.failures.append(f"{turn}: no reply within {self.timeout_s:g} s")
        elif result.first_audio is None:
            self.failures.append(f"{turn}: the reply never reached the caller")

    async def _hang_up(self, c: SyntheticCaller, feed: TranscriptFeed) -> None:
        if c.closed:
            self.show(f"call    the engine hung up (code {c.close_code})")
        else:
            with contextlib.suppress(CallerError, TimeoutError):
                await c.hangup()
        deadline = time.monotonic() + ENDED_WAIT_S
        while not feed.unavailable:
            for entry in await feed.fresh():
                self._show_entry(c, entry, TurnResult(), c.closed_at or time.monotonic())
            if not feed.live or time.monotonic() > deadline:
                break
            await asyncio.sleep(POLL_S)
        assert c.started_at is not None
        ended = (c.closed_at or time.monotonic()) - c.started_at
        self.show(f"call    ended after {ended:.1f} s" + (f": {feed.outcome}" if feed.outcome else ""))
