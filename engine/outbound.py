"""Placing outbound calls through Twilio's REST API.

Twilio dials the number; when it answers, Twilio fetches our voice webhook (the
same one inbound calls use), so an outbound call gets a stream token and joins
the engine exactly like an inbound one. With `conversation.machine_detection` Twilio
also says who answered, a person or an answering machine (engine.screening).
"""

from __future__ import annotations

from typing import Any

from engine.config import E164, Config
from engine.telephony import AMD_PATH, STATUS_PATH, VOICE_PATH

STATUS_EVENTS = ["initiated", "ringing", "answered", "completed"]


class OutboundCallError(RuntimeError):
    """Why a call could not be placed, in words a person can act on."""


def missing_settings(cfg: Config) -> list[str]:
    """Every setting an outbound call needs that is not set, named as a person would set it."""
    need = [
        (cfg.twilio.account_sid, "twilio.account_sid (or TWILIO_ACCOUNT_SID)"),
        (cfg.twilio.auth_token, "twilio.auth_token (or TWILIO_AUTH_TOKEN)"),
        (cfg.twilio.from_number, "twilio.from_number (or TWILIO_FROM_NUMBER), a number of your Twilio account"),
        (cfg.transport.public_url, "transport.public_url (or ENGINE_TRANSPORT__PUBLIC_URL), where Twilio reaches "
                                   "this engine"),
    ]
    return [name for value, name in need if not value]


def machine_detection(cfg: Config, base: str) -> dict[str, Any]:
    """Twilio's answering-machine detection, asynchronous (the call connects at once, the result is posted to
    our AMD callback) and waiting for a machine's greeting to end, so a message left then follows the beep."""
    if not cfg.conversation.machine_detection:
        return {}
    return {"machine_detection": "DetectMessageEnd", "async_amd": "true",
            "async_amd_status_callback": base + AMD_PATH, "async_amd_status_callback_method": "POST",
            "machine_detection_timeout": cfg.conversation.machine_detection_timeout_s}


def place_call(cfg: Config, to: str, http_client: Any = None) -> str:
    """Ask Twilio to call `to` and connect the call to this engine; returns the new CallSid."""
    if not E164.fullmatch(to):
        raise OutboundCallError(f"{to!r} is not an E.164 number (like +15551234567)")
    missing = missing_settings(cfg)
    if missing:
        raise OutboundCallError("cannot place a call; missing: " + "; ".join(missing))
    from twilio.base.exceptions import TwilioException
    from twilio.rest import Client

    base = cfg.transport.public_url.rstrip("/")
    client = Client(cfg.twilio.account_sid, cfg.twilio.auth_token, http_client=http_client)
    try:
        call = client.calls.create(to=to, from_=cfg.twilio.from_number, url=base + VOICE_PATH, method="POST",
                                   status_callback=base + STATUS_PATH, status_callback_method="POST",
                                   status_callback_event=STATUS_EVENTS, **machine_detection(cfg, base))
    except TwilioException as exc:
        raise OutboundCallError(f"Twilio refused the call: {exc}") from exc
    return str(call.sid)
