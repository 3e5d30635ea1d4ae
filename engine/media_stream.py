"""The Twilio Media Streams protocol, one WebSocket at a time, with no I/O.

`MediaStreamSession.receive(text)` takes one message as it arrived and returns
what it means (`Started`, `Audio`, `Dtmf`, `MarkEcho`, `Stopped`) or a `Reject`:
the socket must be closed with that code and reason. Everything Twilio may send
is checked: JSON shape and types, the event order (connected -> start -> media/
dtmf/mark -> stop), the stream sid, the media format (only 8 kHz mono μ-law) and
the stream token. Sequence-number gaps are counted, not fatal: Twilio numbers
every message, so a gap means something was lost on the way.

Close codes (RFC 6455): 1003 unsupported data (binary), 1007 invalid payload,
1008 policy violation (token, stream sid, order), 1009 too big.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Literal

import msgspec

CLOSE_UNSUPPORTED = 1003
CLOSE_INVALID = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
MAX_MEDIA_PAYLOAD = 8000  # 1 s of μ-law: Twilio sends 160 B (20 ms)


# --- what Twilio sends ---------------------------------------------------------------

class _In(msgspec.Struct, tag_field="event", forbid_unknown_fields=False):
    pass


class _Connected(_In, tag="connected"):
    protocol: str = ""
    version: str = ""


class MediaFormat(msgspec.Struct):
    """The audio format a `start` message declares."""

    encoding: str
    sampleRate: int
    channels: int


class _StartInfo(msgspec.Struct):
    streamSid: str
    callSid: str
    mediaFormat: MediaFormat
    accountSid: str = ""
    tracks: list[str] = []
    customParameters: dict[str, str] = {}


class _Start(_In, tag="start"):
    start: _StartInfo
    sequenceNumber: str = ""
    streamSid: str = ""


class _MediaInfo(msgspec.Struct):
    payload: str
    track: str = "inbound"
    chunk: str = ""
    timestamp: str = ""


class _Media(_In, tag="media"):
    media: _MediaInfo
    streamSid: str
    sequenceNumber: str = ""


class _DtmfInfo(msgspec.Struct):
    digit: str
    track: str = "inbound_track"


class _Dtmf(_In, tag="dtmf"):
    dtmf: _DtmfInfo
    streamSid: str
    sequenceNumber: str = ""


class _MarkInfo(msgspec.Struct):
    name: str


class _Mark(_In, tag="mark"):
    mark: _MarkInfo
    streamSid: str
    sequenceNumber: str = ""


class _Stop(_In, tag="stop"):
    streamSid: str
    sequenceNumber: str = ""


_decoder = msgspec.json.Decoder(_Connected | _Start | _Media | _Dtmf | _Mark | _Stop)


# --- what a message means ------------------------------------------------------------------

class Started(msgspec.Struct):
    """The stream started: its ids, and the custom parameters the TwiML gave it."""

    stream_sid: str
    call_sid: str
    account_sid: str
    custom_parameters: dict[str, str]


class Audio(msgspec.Struct):
    """About 20 ms of the caller's μ-law audio, with Twilio's timestamp."""

    mulaw: bytes
    timestamp_ms: int | None


class Dtmf(msgspec.Struct):
    """The caller pressed a key."""

    digit: str


class MarkEcho(msgspec.Struct):
    """Twilio played the audio up to the mark it echoes (or dropped it on a clear); `seq` is the number our marks
    are named with, None for a name that is not one."""

    name: str
    seq: int | None = None


class Stopped(msgspec.Struct):
    """The caller hung up: Twilio's `stop`."""

    pass


class Reject(msgspec.Struct):
    """Close the socket with `code`: the message broke the protocol."""

    code: int
    reason: str


Event = Started | Audio | Dtmf | MarkEcho | Stopped | Reject
State = Literal["connecting", "awaiting-start", "streaming", "stopped", "rejected"]
DTMF_DIGITS = frozenset("0123456789*#ABCD")


class MediaStreamSession:
    """Protocol state of one Media Streams socket.

    `verify_token(custom_parameters, call_sid, account_sid)` returns None when the
    stream may attach, else the reason to refuse it.
    """

    def __init__(self, verify_token: Callable[[dict[str, str], str, str], str | None]) -> None:
        self._verify_token = verify_token
        self.state: State = "connecting"
        self.stream_sid = ""
        self.call_sid = ""
        self.last_seq: int | None = None
        self.seq_gaps = 0
        self.seq_out_of_order = 0
        self.messages = 0

    def _reject(self, code: int, reason: str) -> Reject:
        self.state = "rejected"
        return Reject(code, reason)

    def receive_binary(self) -> Reject:
        return self._reject(CLOSE_UNSUPPORTED, "binary frames are not part of the Media Streams protocol")

    def receive(self, text: str | bytes) -> Event | None:
        """One text message in; what it means out (None: nothing for the caller to do)."""
        if self.state in ("stopped", "rejected"):
            return self._reject(CLOSE_POLICY, f"message after the stream {self.state}")
        self.messages += 1
        try:
            msg = _decoder.decode(text)
        except msgspec.ValidationError as exc:
            if str(exc).endswith("- at `$.event`") or "missing required field `event`" in str(exc):
                return self._reject(CLOSE_INVALID, "unknown or missing event type")
            return self._reject(CLOSE_INVALID, f"invalid Media Streams message: {exc}"[:120])
        except msgspec.DecodeError:
            return self._reject(CLOSE_INVALID, "malformed JSON")
        except RecursionError:  # nested past msgspec's depth limit: no message of Twilio's is
            return self._reject(CLOSE_INVALID, "message nested too deep")
        if (bad := _overlong_number(msg)) is not None:
            return self._reject(CLOSE_INVALID, f"{bad} is not a number Twilio sends")
        if isinstance(msg, _Connected):
            if self.state != "connecting":
                return self._reject(CLOSE_POLICY, "connected sent twice")
            self.state = "awaiting-start"
            return None
        if isinstance(msg, _Start):
            return self._start(msg)
        if self.state != "streaming":
            return self._reject(CLOSE_POLICY, f"{type(msg).__name__.strip('_').lower()} before start")
        if msg.streamSid != self.stream_sid:
            return self._reject(CLOSE_POLICY, "wrong streamSid")
        self._count_seq(msg.sequenceNumber)
        if isinstance(msg, _Media):
            return self._media(msg)
        if isinstance(msg, _Dtmf):
            if msg.dtmf.digit not in DTMF_DIGITS:
                return self._reject(CLOSE_INVALID, "invalid DTMF digit")
            return Dtmf(msg.dtmf.digit)
        if isinstance(msg, _Mark):
            name = msg.mark.name
            return MarkEcho(name, int(name) if _is_number(name) else None)
        self.state = "stopped"
        return Stopped()

    def _start(self, msg: _Start) -> Event:
        if self.state == "streaming":
            return self._reject(CLOSE_POLICY, "start sent twice")
        info = msg.start
        fmt = info.mediaFormat
        if (fmt.encoding, fmt.sampleRate, fmt.channels) != ("audio/x-mulaw", 8000, 1):
            return self._reject(CLOSE_INVALID, f"unsupported media format {fmt.encoding}/{fmt.sampleRate}/"
                                               f"{fmt.channels}: only audio/x-mulaw 8000 Hz mono")
        if not info.streamSid or not info.callSid:
            return self._reject(CLOSE_INVALID, "start without streamSid or callSid")
        if msg.streamSid and msg.streamSid != info.streamSid:
            return self._reject(CLOSE_POLICY, "wrong streamSid")
        refusal = self._verify_token(info.customParameters, info.callSid, info.accountSid)
        if refusal is not None:
            return self._reject(CLOSE_POLICY, refusal)
        self.state = "streaming"
        self.stream_sid, self.call_sid = info.streamSid, info.callSid
        self._count_seq(msg.sequenceNumber)
        return Started(info.streamSid, info.callSid, info.accountSid, dict(info.customParameters))

    def _media(self, msg: _Media) -> Event:
        if msg.media.track not in ("inbound", "inbound_track"):
            return self._reject(CLOSE_INVALID, f"unexpected media track {msg.media.track!r}")
        if len(msg.media.payload) > MAX_MEDIA_PAYLOAD * 4 // 3 + 4:
            return self._reject(CLOSE_TOO_BIG, "media payload too large")
        try:
            data = base64.b64decode(msg.media.payload, validate=True)
        except (binascii.Error, ValueError):
            return self._reject(CLOSE_INVALID, "media payload is not base64")
        ts = msg.media.timestamp
        return Audio(data, int(ts) if _is_number(ts) else None)

    def _count_seq(self, raw: str) -> None:
        if not _is_number(raw):
            return
        seq = int(raw)
        if self.last_seq is not None:
            if seq > self.last_seq + 1:
                self.seq_gaps += seq - self.last_seq - 1
            elif seq <= self.last_seq:
                self.seq_out_of_order += 1
                return
        self.last_seq = seq


MAX_DIGITS = 19  # an int64: Twilio's sequence numbers and timestamps; longer ones would make int() slow, then raise


def _is_number(text: str) -> bool:
    """Decimal ASCII digits only, and not too many: str.isdigit() also takes "²" and other digits that int()
    refuses, and int() refuses more than 4,300 digits."""
    return text.isascii() and text.isdigit() and len(text) <= MAX_DIGITS


def _overlong_number(msg: _In) -> str | None:
    """The name of a numeric field (sequenceNumber, timestamp, chunk) longer than any Twilio sends, if any."""
    fields = {"sequenceNumber": getattr(msg, "sequenceNumber", "")}
    if isinstance(msg, _Media):
        fields.update(timestamp=msg.media.timestamp, chunk=msg.media.chunk)
    for name, text in fields.items():
        if len(text) > MAX_DIGITS and text.isascii() and text.isdigit():
            return name
    return None


# --- what we send -------------------------------------------------------------------------

_encoder = msgspec.json.Encoder()


def media_message(stream_sid: str, mulaw: bytes) -> str:
    return _encoder.encode({"event": "media", "streamSid": stream_sid,
                            "media": {"payload": base64.b64encode(mulaw).decode()}}).decode()


def mark_message(stream_sid: str, name: str) -> str:
    return _encoder.encode({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}}).decode()


def clear_message(stream_sid: str) -> str:
    return _encoder.encode({"event": "clear", "streamSid": stream_sid}).decode()
