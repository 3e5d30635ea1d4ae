"""Twilio webhooks: per-call stream tokens, TwiML answers, and X-Twilio-Signature checks.

Twilio strips query strings from `<Stream url>`, so the call's credentials travel
as a `<Parameter>` and come back in the stream's `start.customParameters`. The
token binds the stream to the CallSid the webhook answered, and expires: a
stream that did not come from our webhook cannot attach to the engine.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlsplit

from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import Connect, VoiceResponse

VOICE_PATH = "/twilio/voice"
STATUS_PATH = "/twilio/status"
STREAM_PATH = "/twilio/stream"
AMD_PATH = "/twilio/amd"
TOKEN_PARAMETER = "token"


class StreamTokens:
    """HMAC-signed tokens `<call_sid>.<expiry unix s>.<hex mac>`, each good for one stream.

    A token that opened a stream is spent: its CallSid is remembered until the token would have expired anyway,
    so a captured token cannot attach a second stream to the call, during it or after it.
    """

    def __init__(self, secret: bytes, ttl_s: float) -> None:
        if len(secret) < 16:
            raise ValueError("stream token secret must be at least 16 bytes")
        self._secret = secret
        self.ttl_s = ttl_s
        self._spent: dict[str, int] = {}  # call sid -> its token's expiry: forgotten once that has passed

    def _mac(self, call_sid: str, expiry: int) -> str:
        return hmac.new(self._secret, f"{call_sid}.{expiry}".encode(), hashlib.sha256).hexdigest()

    def issue(self, call_sid: str, now: float | None = None) -> str:
        expiry = int((time.time() if now is None else now) + self.ttl_s)
        return f"{call_sid}.{expiry}.{self._mac(call_sid, expiry)}"

    def verify(self, token: str, call_sid: str, now: float | None = None) -> str | None:
        """None when the token is good for `call_sid`, else why not."""
        parts = token.split(".")
        # ASCII only (compare_digest refuses other str), and an expiry int() takes (up to 4,300 digits).
        if len(parts) != 3 or not token.isascii() or not parts[1].isdigit() or len(parts[1]) > 12:
            return "malformed stream token"
        sid, expiry, mac = parts[0], int(parts[1]), parts[2]
        if not hmac.compare_digest(mac, self._mac(sid, expiry)):
            return "stream token signature does not verify"
        if sid != call_sid:
            return "stream token belongs to another call"
        now = time.time() if now is None else now
        if now > expiry:
            return "stream token expired"
        if sid in self._spent:
            return "stream token already used"
        return None

    def spend(self, token: str, call_sid: str, now: float | None = None) -> str | None:
        """`verify`, and if the token is good, use it up: None when the stream may attach, else why not."""
        now = time.time() if now is None else now
        refusal = self.verify(token, call_sid, now)
        if refusal is None:
            self._spent = {sid: expiry for sid, expiry in self._spent.items() if expiry >= now}
            self._spent[call_sid] = int(token.split(".")[1])
        return refusal


def stream_url(public_url: str) -> str:
    """The wss:// URL of our Media Streams endpoint as Twilio must reach it."""
    parts = urlsplit(public_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}{STREAM_PATH}"


def connect_twiml(public_url: str, token: str) -> str:
    """TwiML that connects the call to our Media Streams endpoint, carrying the stream token."""
    response = VoiceResponse()
    connect = Connect()
    stream = connect.stream(url=stream_url(public_url), status_callback=public_url.rstrip("/") + STATUS_PATH)
    stream.parameter(name=TOKEN_PARAMETER, value=token)
    response.append(connect)
    return str(response)


def reject_twiml(reason: str) -> str:
    """Politely refuse a call (e.g. the engine is at capacity)."""
    response = VoiceResponse()
    response.say(reason)
    response.hangup()
    return str(response)


def signature_valid(auth_token: str, url: str, params: dict[str, str], signature: str | None) -> bool:
    if not signature or not auth_token:
        return False
    return bool(RequestValidator(auth_token).validate(url, params, signature))
