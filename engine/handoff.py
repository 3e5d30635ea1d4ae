"""Hand-off to a person: whether the caller asked for one, and the TwiML that puts the call through.

A caller asks by pressing `conversation.transfer_digit` (alone, not as part of a
number being keyed in) or by saying one of `conversation.transfer_phrases`. The
conductor then stops whatever it was saying and says `transfer_line`; once that has
played, the transport asks Twilio's REST API to redirect the live call to TwiML that
dials `transfer_to`. With no `transfer_to` the caller hears `transfer_unavailable`
and the bot carries on; if Twilio refuses, `transfer_failed`.
"""

from __future__ import annotations

import re
from typing import Any

from twilio.twiml.voice_response import Dial, VoiceResponse

_NOT_WORDS = re.compile(r"[^\w\s']")


def _words(text: str) -> str:
    return " " + " ".join(_NOT_WORDS.sub(" ", text.lower()).split()) + " "


def asks_for_person(text: str, phrases: list[str]) -> str | None:
    """The phrase in `text` that asks for a person, matched as whole words ignoring case and punctuation; None."""
    said = _words(text)
    return next((phrase for phrase in phrases if phrase.strip() and _words(phrase) in said), None)


def dial_twiml(to: str) -> str:
    """TwiML that puts the call through to `to`: an E.164 number, or a sip: URI."""
    response = VoiceResponse()
    dial = Dial()
    if to.startswith(("sip:", "sips:")):
        dial.sip(to)
    else:
        dial.number(to)
    response.append(dial)
    return str(response)


class TransferError(RuntimeError):
    """Why Twilio did not put the call through, in words for the log."""


TWILIO_API = "https://api.twilio.com"
REST_TIMEOUT_S = 10.0


def twilio_http(api_url: str = "") -> Any:
    """The HTTP client for Twilio's REST API: Twilio's own, sending to `api_url` in place of api.twilio.com when
    set (`twilio.api_url`: a regional endpoint, or a proxy)."""
    from twilio.http.http_client import TwilioHttpClient

    base = api_url.rstrip("/")

    class Rebased(TwilioHttpClient):  # type: ignore[misc]
        """Twilio's HTTP client, sending what was for api.twilio.com to `twilio.api_url`."""

        def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            if base and url.startswith(TWILIO_API):
                url = base + url[len(TWILIO_API):]
            return super().request(method, url, *args, **kwargs)

    return Rebased(timeout=REST_TIMEOUT_S)


def put_through(account_sid: str, auth_token: str, call_sid: str, to: str, http_client: Any = None) -> None:
    """Redirect live call `call_sid` to TwiML that dials `to` (Twilio's REST API; blocks: run it off the loop).
    Twilio then ends the call's media stream, and the engine's part in the call with it."""
    if not (account_sid and auth_token):
        raise TransferError("twilio.account_sid and twilio.auth_token are needed to put a call through")
    from twilio.base.exceptions import TwilioException
    from twilio.rest import Client

    try:
        Client(account_sid, auth_token, http_client=http_client).calls(call_sid).update(twiml=dial_twiml(to))
    except TwilioException as exc:
        raise TransferError(f"Twilio refused to put the call through: {exc}") from exc
