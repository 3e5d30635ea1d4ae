"""Talk to the engine without a phone: the browser playground, and each call's transcript as it happens.

- `GET /playground/`: one page of plain HTML and JS (procs/playground.html, shipped in
  the package; no build step). It captures the microphone and speaks the Twilio Media
  Streams protocol to `/playground/stream` as 20 ms μ-law 8 kHz frames, plays the
  bot's audio, echoes marks once their audio has played and honours `clear`: the
  engine runs exactly the code a phone call runs.
- `POST /playground/token`: a line for one call: a call sid of its own (`PG...`) and a
  short-lived, single-use token bound to it, signed with a key of this engine run
  (the same `StreamTokens` as Twilio calls', not a Twilio signature). A line is
  refused, as the voice webhook refuses one, when every line is taken or the box is
  saturated.
- `GET /calls/{sid}/transcript`: the call's transcript so far (engine.call_transcript;
  replies still playing marked `playing`), or as it ended (the latest `KEPT_ENDED`
  calls, procs.after_call). For operators (as /health), or with the playground token of that call.

`playground.enabled` is off by default: then none of the playground's paths exist. It
answers loopback clients only; with `playground.secret` set, also anyone presenting
it (`Authorization: Bearer <secret>`; the page takes it from its URL's `#key=`
fragment, which the browser never sends).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from importlib import resources

import msgspec
from aiohttp import web

from engine.admission import Party
from engine.telephony import StreamTokens
from procs.transport_shared import TransportShared, bearer_is, loopback

log = logging.getLogger("engine.transport")

PAGE_PATH = "/playground/"
TOKEN_PATH = "/playground/token"
STREAM_PATH = "/playground/stream"
TRANSCRIPT_PATH = "/calls/{sid}/transcript"
READ_AFTER_S = 3600.0
"""A playground token reads its call's transcript until this long after it expired (the call itself may last)."""

Verify = Callable[[dict[str, str], str, str], "str | None"]


class Playground:
    """The playground's routes, and the transcript route it shares with operators."""

    def __init__(self, shared: TransportShared, operator: Callable[[web.Request], bool],
                 media_stream: Callable[[web.Request, Verify], Awaitable[web.StreamResponse]]) -> None:
        self.shared = shared
        self.cfg = shared.cfg.playground
        self.operator = operator
        self.media_stream = media_stream
        self.tokens = StreamTokens(secrets.token_bytes(32), self.cfg.token_ttl_s)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(TRANSCRIPT_PATH, self.transcript)
        if not self.cfg.enabled:
            return
        app.router.add_get("/playground", self.to_page)
        app.router.add_get(PAGE_PATH, self.page)
        app.router.add_post(TOKEN_PATH, self.token)
        app.router.add_get(STREAM_PATH, self.stream)

    def allowed(self, request: web.Request) -> bool:
        """Loopback; elsewhere only with the configured secret."""
        return loopback(request.remote) or bearer_is(request, self.cfg.secret)

    async def to_page(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(PAGE_PATH)

    async def page(self, request: web.Request) -> web.StreamResponse:
        if not (loopback(request.remote) or self.cfg.secret):  # the page itself holds nothing: its calls need the key
            return web.Response(status=404, text="not found\n")
        html = resources.files("procs").joinpath("playground.html").read_text()
        return web.Response(text=html, content_type="text/html",
                            headers={"Cache-Control": "no-store", "Content-Security-Policy":
                                     "default-src 'self'; script-src 'unsafe-inline' blob:; "
                                     "style-src 'unsafe-inline'; connect-src 'self' ws: wss:"})

    async def token(self, request: web.Request) -> web.Response:
        shared = self.shared
        if not self.allowed(request):
            shared.counters["playground_refused"] += 1
            return web.Response(status=403, text="the playground answers loopback clients, or the playground.secret\n")
        now = time.monotonic()
        call_sid = "PG" + secrets.token_hex(16)
        if shared.no_line(now) is not None:
            shared.counters["playground_busy"] += 1
            return web.Response(status=503, text="all lines are busy\n")
        shared.reservations.reserve(call_sid, now, Party())
        shared.counters["playground_lines"] += 1
        log.info("playground call %s: line given to %s", call_sid, request.remote)
        return web.json_response({"token": self.tokens.issue(call_sid), "call_sid": call_sid,
                                  "stream_url": STREAM_PATH, "expires_in_s": self.cfg.token_ttl_s})

    async def stream(self, request: web.Request) -> web.StreamResponse:
        if not self.allowed(request) and not self.cfg.secret:
            return web.Response(status=403, text="loopback only\n")
        return await self.media_stream(request, self._verify)

    def _verify(self, params: dict[str, str], call_sid: str, account_sid: str) -> str | None:
        """A playground stream's `start`: the token this engine gave for that call sid, once (the token is the key:
        with a secret configured the upgrade itself is not checked, as browsers cannot set its headers)."""
        token = params.get("token")
        refusal = "playground token missing" if token is None else self.tokens.spend(token, call_sid)
        if refusal is not None:
            self.shared.reservations.claim(call_sid)
        return refusal

    async def transcript(self, request: web.Request) -> web.Response:
        sid = request.match_info["sid"]
        if not (self.operator(request) or self._token_reads(request, sid)):
            return web.Response(status=404, text="not found\n")
        call, after = self.shared.calls.get(sid), self.shared.after
        if call is not None:
            body = {"call_sid": sid, "live": True, "outcome": None, **call.transcript.live(time.monotonic())}
        elif after is not None and sid in after.transcripts:
            body = {**after.transcripts[sid], "live": False}
        else:
            return web.Response(status=404, text="no such call\n")
        return web.Response(body=msgspec.json.encode(body), content_type="application/json")

    def _token_reads(self, request: web.Request, sid: str) -> bool:
        """A playground token reads the transcript of its own call (spent or not; for a while after it expired)."""
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        return self.tokens.verify(bearer, sid, time.time() - READ_AFTER_S) in (None, "stream token already used")
