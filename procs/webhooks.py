"""The transport's Twilio HTTP endpoints: the voice webhook (TwiML), the status and AMD callbacks, and signatures.

Every request must carry a valid `X-Twilio-Signature`, computed over the URL Twilio
requested: `transport.public_url` plus the path and the raw query string. Nothing a
client sends (Host, X-Forwarded-*) decides that URL, so with signatures checked and
no public_url every request is refused, with a log line that says why. A form body
must arrive within `transport.request_timeout_s`. The voice webhook answers TwiML
that connects the call to the Media Streams socket with a single-use stream token
bound to the CallSid, and holds a line for it until its stream starts (or the token
lapses); when every line is taken or held, or the box is saturated
(`engine.admission`), it answers a spoken "busy" and a hang-up. The Media Streams
upgrade is signed too; `upgrade_signed` checks it.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from engine.admission import Party
from engine.conductor_io import Answered
from engine.privacy import phone_number
from engine.screening import ANSWERED_BY
from engine.telephony import (
    AMD_PATH,
    STATUS_PATH,
    STREAM_PATH,
    VOICE_PATH,
    StreamTokens,
    connect_twiml,
    reject_twiml,
    signature_valid,
    stream_url,
)
from procs.transport_shared import TransportShared

log = logging.getLogger("engine.transport")

CALL_OVER = frozenset({"completed", "busy", "failed", "no-answer", "canceled", "stream-error"})
BUSY_LINE = "All our lines are busy right now. Please call again in a few minutes."


def party_of(params: dict[str, str]) -> Party:
    """Who a call is with, from the voice webhook's form: the caller, or on a call we placed, the number called."""
    outbound = params.get("Direction", "inbound").startswith("outbound")
    return Party(params.get("To" if outbound else "From", ""), outbound)


class Webhooks:
    """The voice webhook, the status and AMD callbacks, and the signature checks every Twilio request goes through."""

    def __init__(self, tokens: StreamTokens, shared: TransportShared) -> None:
        self.shared = shared
        self.cfg = shared.cfg
        self.admission = shared.admission
        self.reservations = shared.reservations
        self.tokens = tokens
        self.counters = shared.counters
        self.recorder = shared.recorder
        self.calls = shared.calls
        self.answers = shared.answers

    def public_url(self, request: web.Request) -> str:
        """The configured public URL; only with signatures off (a trusted test network) the request's own."""
        if self.cfg.transport.public_url:
            return self.cfg.transport.public_url.rstrip("/")
        return f"{request.scheme}://{request.host}"

    async def twilio_form(self, request: web.Request, path: str) -> dict[str, str] | web.Response:
        """The webhook's form, if it really comes from Twilio; else the refusal to answer with."""
        try:
            async with asyncio.timeout(self.cfg.transport.request_timeout_s):
                form = await request.post()
        except (ValueError, UnicodeDecodeError) as exc:  # not a form Twilio would send (found by fuzzing)
            log.warning("refused %s from %s: unreadable form body (%s)", path, request.remote, exc)
            self.counters["webhook_malformed"] += 1
            return web.Response(status=400, text="malformed form body\n")
        except TimeoutError:
            log.warning("refused %s from %s: body not sent within %g s", path, request.remote,
                        self.cfg.transport.request_timeout_s)
            self.counters["webhook_slow_body"] += 1
            return web.Response(status=408, text="body too slow\n", headers={"Connection": "close"})
        params = {k: v for k, v in form.items() if isinstance(v, str)}
        if not self.cfg.transport.validate_signatures:
            return params
        if refusal := self._unverifiable(path):
            self.counters["webhook_refused"] += 1
            return refusal
        raw_query = request.rel_url.raw_query_string
        url = self.public_url(request) + path + (f"?{raw_query}" if raw_query else "")
        if not signature_valid(self.cfg.twilio.auth_token, url, params, request.headers.get("X-Twilio-Signature")):
            log.warning("refused %s from %s: bad or missing X-Twilio-Signature (validated against %s)",
                        path, request.remote, url)
            self.counters["webhook_refused"] += 1
            return web.Response(status=403, text="invalid signature\n")
        return params

    def _unverifiable(self, path: str) -> web.Response | None:
        """Why no signature can be checked yet (a setting missing), as the refusal to answer with."""
        for setting, name in ((self.cfg.twilio.auth_token, "twilio.auth_token (TWILIO_AUTH_TOKEN)"),
                              (self.cfg.transport.public_url, "transport.public_url, the URL Twilio signs,")):
            if not setting:
                log.warning("refused %s: %s is not set, so X-Twilio-Signature cannot be checked", path, name)
                return web.Response(status=403, text="signature cannot be validated\n")
        return None

    async def voice(self, request: web.Request) -> web.Response:
        params = await self.twilio_form(request, VOICE_PATH)
        if isinstance(params, web.Response):
            return params
        call_sid = params.get("CallSid", "")
        if not call_sid:
            return web.Response(status=400, text="CallSid missing\n")
        now = time.monotonic()
        if (refused := self.shared.no_line(now, besides=call_sid)) is not None:
            what, why = refused
            self.counters[f"calls_refused_{what}"] += 1
            if what == "load":
                self.admission.turned_away += 1
            log.warning("call %s refused: %s", call_sid, why)
            twiml = reject_twiml(BUSY_LINE)
        else:
            self.counters["webhooks_answered"] += 1
            log.info("call %s (%s -> %s, %s) answered", call_sid,
                     phone_number(params.get("From"), self.cfg.engine.log_private),
                     phone_number(params.get("To"), self.cfg.engine.log_private), params.get("Direction", "inbound"))
            self.reservations.reserve(call_sid, now, party_of(params))
            twiml = connect_twiml(self.public_url(request), self.tokens.issue(call_sid))
        return web.Response(text=twiml, content_type="text/xml")

    async def status_callback(self, request: web.Request) -> web.Response:
        params = await self.twilio_form(request, STATUS_PATH)
        if isinstance(params, web.Response):
            return params
        what = params.get("StreamEvent") or params.get("CallStatus") or "unknown"
        self.counters[f"status_{what}"] += 1
        call_sid = params.get("CallSid", "")
        log.info("status callback: call %s %s", call_sid, what)
        if what in CALL_OVER:  # a call that ended before its stream started holds no line
            self.reservations.claim(call_sid)
        if self.recorder is not None:  # kept with the call's recording, if it is being recorded
            self.recorder.event(call_sid, {"t_ns": time.monotonic_ns(), "event": "status", "params": params})
        return web.Response(status=204)

    async def amd_callback(self, request: web.Request) -> web.Response:
        """Who answered a call we placed (Twilio's async answering-machine detection): kept for the call until its
        conversation begins, and given to its conductor if it is streaming."""
        params = await self.twilio_form(request, AMD_PATH)
        if isinstance(params, web.Response):
            return params
        call_sid, answered_by = params.get("CallSid", ""), params.get("AnsweredBy", "")
        if not call_sid or answered_by not in ANSWERED_BY:
            self.counters["amd_malformed"] += 1
            log.warning("AMD callback from %s refused: CallSid or AnsweredBy missing or not Twilio's", request.remote)
            return web.Response(status=400, text="CallSid or AnsweredBy missing or unknown\n")
        self.counters[f"amd_{answered_by}"] += 1
        log.info("call %s answered by %s (detected in %s ms)", call_sid, answered_by,
                 params.get("MachineDetectionDuration", "?")[:12])
        if self.recorder is not None:  # kept with the call's recording, if it is being recorded
            self.recorder.event(call_sid, {"t_ns": time.monotonic_ns(), "event": "amd", "params": params})
        # Kept even for a streaming call: one whose conversation has not begun yet takes it when it does.
        self.answers.keep(call_sid, answered_by, time.monotonic())
        if (call := self.calls.get(call_sid)) is not None:
            await call.feed(Answered(answered_by))
        return web.Response(status=204)

    def upgrade_signed(self, request: web.Request) -> bool:
        """Twilio signs the Media Streams upgrade too: the stream URL, no parameters. That URL never changes, so a
        captured upgrade header opens sockets again; what stops it is the `start`: a single-use stream token within
        `transport.start_timeout_s`, and at most `transport.max_unstarted_streams` sockets waiting for one."""
        if self._unverifiable(STREAM_PATH) is not None:
            return False
        signature = request.headers.get("X-Twilio-Signature")
        public = self.public_url(request)
        # The wss:// form is what Twilio connects to; accept the https:// spelling of the same URL as well.
        return any(signature_valid(self.cfg.twilio.auth_token, url, {}, signature)
                   for url in (stream_url(public), public + STREAM_PATH))

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(VOICE_PATH, self.voice)
        app.router.add_post(STATUS_PATH, self.status_callback)
        app.router.add_post(AMD_PATH, self.amd_callback)
