"""The transport's Twilio HTTP endpoints: the voice webhook (TwiML), the status callback, and signatures.

Every request must carry a valid `X-Twilio-Signature`, computed over the public URL
Twilio used (`transport.public_url`, else the request's own, honouring a proxy's
X-Forwarded-* headers). The voice webhook answers TwiML that connects the call to
the Media Streams socket with a stream token bound to the CallSid, or, when every
ring pair is taken or the box is saturated (`engine.admission`), a spoken "busy"
and a hang-up. The Media Streams upgrade is
signed too; `upgrade_signed` checks it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

from aiohttp import web

from engine.admission import Admission
from engine.config import Config
from engine.recorder import Recorder
from engine.telephony import (
    STATUS_PATH,
    STREAM_PATH,
    VOICE_PATH,
    StreamTokens,
    connect_twiml,
    reject_twiml,
    signature_valid,
    stream_url,
)
from ipc.pool import RingPool

log = logging.getLogger("engine.transport")

BUSY_LINE = "All our lines are busy right now. Please call again in a few minutes."


class Webhooks:
    """The voice webhook and the status callback, and the signature checks every Twilio request goes through."""

    def __init__(self, cfg: Config, pool: RingPool, tokens: StreamTokens, counters: Counter[str],
                 recorder: Recorder | None, admission: Admission) -> None:
        self.cfg = cfg
        self.admission = admission
        self.pool = pool
        self.tokens = tokens
        self.counters = counters
        self.recorder = recorder

    def public_url(self, request: web.Request) -> str:
        if self.cfg.transport.public_url:
            return self.cfg.transport.public_url.rstrip("/")
        proto = request.headers.get("X-Forwarded-Proto", request.scheme)
        host = request.headers.get("X-Forwarded-Host", request.host)
        return f"{proto}://{host}"

    async def twilio_form(self, request: web.Request, path: str) -> dict[str, str] | web.Response:
        """The webhook's form, if it really comes from Twilio; else the refusal to answer with."""
        try:
            form = await request.post()
        except (ValueError, UnicodeDecodeError) as exc:  # not a form Twilio would send (found by fuzzing)
            log.warning("refused %s from %s: unreadable form body (%s)", path, request.remote, exc)
            self.counters["webhook_malformed"] += 1
            return web.Response(status=400, text="malformed form body\n")
        params = {k: v for k, v in form.items() if isinstance(v, str)}
        if not self.cfg.transport.validate_signatures:
            return params
        url = self.public_url(request) + path + (f"?{request.query_string}" if request.query_string else "")
        if not self.cfg.twilio.auth_token:
            log.warning("refused %s: twilio.auth_token (TWILIO_AUTH_TOKEN) is not set, so X-Twilio-Signature "
                        "cannot be checked", path)
            self.counters["webhook_refused"] += 1
            return web.Response(status=403, text="signature cannot be validated\n")
        if not signature_valid(self.cfg.twilio.auth_token, url, params, request.headers.get("X-Twilio-Signature")):
            log.warning("refused %s from %s: bad or missing X-Twilio-Signature (validated against %s)",
                        path, request.remote, url)
            self.counters["webhook_refused"] += 1
            return web.Response(status=403, text="invalid signature\n")
        return params

    async def voice(self, request: web.Request) -> web.Response:
        params = await self.twilio_form(request, VOICE_PATH)
        if isinstance(params, web.Response):
            return params
        call_sid = params.get("CallSid", "")
        if not call_sid:
            return web.Response(status=400, text="CallSid missing\n")
        active = len(self.pool.leases())
        verdict = self.admission.verdict(active)
        if active >= self.pool.max_calls:
            self.counters["calls_refused_capacity"] += 1
            log.warning("call %s refused: all %d lines busy", call_sid, self.pool.max_calls)
            twiml = reject_twiml(BUSY_LINE)
        elif not verdict.admit:
            self.counters["calls_refused_load"] += 1
            self.admission.turned_away += 1
            log.warning("call %s refused: %s", call_sid, verdict.why)
            twiml = reject_twiml(BUSY_LINE)
        else:
            self.counters["webhooks_answered"] += 1
            log.info("call %s (%s -> %s, %s) answered", call_sid, params.get("From"), params.get("To"),
                     params.get("Direction", "inbound"))
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
        if self.recorder is not None:  # kept with the call's recording, if it is being recorded
            self.recorder.event(call_sid, {"t_ns": time.monotonic_ns(), "event": "status", "params": params})
        return web.Response(status=204)

    def upgrade_signed(self, request: web.Request) -> bool:
        """Twilio signs the Media Streams upgrade too: the stream URL, no parameters."""
        signature = request.headers.get("X-Twilio-Signature")
        public = self.public_url(request)
        # The wss:// form is what Twilio connects to; accept the https:// spelling of the same URL as well.
        return any(signature_valid(self.cfg.twilio.auth_token, url, {}, signature)
                   for url in (stream_url(public), public + STREAM_PATH))

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(VOICE_PATH, self.voice)
        app.router.add_post(STATUS_PATH, self.status_callback)
