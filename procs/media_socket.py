"""One Twilio Media Streams WebSocket read as protocol events: the socket side of a call, before and after `start`.

`MediaSocket.events()` yields what the protocol core (`MediaStreamSession`) makes of
each message, with the time it arrived. It ends when the socket closes, goes silent
for `transport.stream_idle_timeout_s` (a network that died without a FIN), has not
said `start` within `transport.start_timeout_s` of its upgrade, sends something the
protocol refuses (the socket is closed with the code the core gives), or the
caller's `stop`; `outcome` then says which. Pings count for neither deadline: aiohttp
answers them inside `receive()`, which would restart its own timeout on each, so the
deadlines are kept here. The transport reads it up to the `start`; the call
(`procs.phone_call`) reads the rest.

Writes are bounded too: `send` and `close` give up after `transport.send_timeout_s`
and abort the connection, so a caller whose network stopped reading costs its own
call, never a loop other calls share.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from engine.media_stream import CLOSE_POLICY, Audio, Dtmf, MarkEcho, MediaStreamSession, Reject, Started, Stopped

log = logging.getLogger("engine.transport")

StreamEvent = Started | Audio | Dtmf | MarkEcho
_CLOSED = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED)


class CallerNotReading(ConnectionError):
    """A send to the caller did not drain in time: the connection was aborted."""


@dataclass(frozen=True)
class SocketLimits:
    """How long a Media Stream may take: to say `start`, between messages, and to take each send."""

    start_s: float
    idle_s: float
    send_s: float


class MediaSocket:
    """A Media Streams socket and its protocol state; `events()` is read once, by whoever holds it."""

    def __init__(self, ws: web.WebSocketResponse, session: MediaStreamSession, limits: SocketLimits,
                 counters: Counter[str], remote: str | None, transport: asyncio.BaseTransport | None = None) -> None:
        self.ws = ws
        self.session = session
        self.limits = limits
        self.counters = counters
        self.remote = remote
        self._transport = transport
        self.aborted = False
        self.outcome = "socket closed without stop"

    async def events(self) -> AsyncIterator[tuple[int, StreamEvent]]:
        """(arrival time in monotonic ns, event) for each message that means something, until the stream ends."""
        loop = asyncio.get_running_loop()
        start_by = loop.time() + self.limits.start_s
        heard_at = loop.time()
        while True:
            started = self.session.state not in ("connecting", "awaiting-start")
            deadline = heard_at + self.limits.idle_s if started else min(heard_at + self.limits.idle_s, start_by)
            try:
                async with asyncio.timeout_at(deadline):
                    msg = await self.ws.receive()
            except TimeoutError:
                await self._timed_out(started or loop.time() < start_by)
                return
            heard_at = loop.time()
            if msg.type in _CLOSED:
                return
            t_ns = time.monotonic_ns()
            if msg.type == aiohttp.WSMsgType.TEXT:
                event = self.session.receive(msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                event = self.session.receive_binary()
            elif self.aborted:
                return
            else:  # ERROR: e.g. a message over max_message_bytes; aiohttp has closed with 1009
                self.outcome = f"protocol error: {self.ws.exception()}"
                log.warning("media stream from %s closed: %s", self.remote, self.outcome)
                self.counters["streams_rejected"] += 1
                return
            if event is None:
                continue
            if isinstance(event, Reject):
                self.outcome = f"rejected: {event.reason}"
                log.warning("media stream %s from %s closed (%d): %s", self.session.stream_sid or "(no start)",
                            self.remote, event.code, event.reason)
                self.counters["streams_rejected"] += 1
                await self.close(event.code, event.reason)
                return
            if isinstance(event, Stopped):
                self.outcome = "caller hung up (stop)"
                return
            yield t_ns, event

    async def _timed_out(self, idle: bool) -> None:
        if idle:
            self.outcome = f"stream silent for {self.limits.idle_s:g} s"
            log.warning("media stream %s: %s; treating the caller as gone", self.session.stream_sid, self.outcome)
            await self.close(1001, "stream idle")
        else:
            self.outcome = f"no start within {self.limits.start_s:g} s"
            log.warning("media stream from %s shed: %s of its upgrade", self.remote, self.outcome)
            self.counters["streams_shed_no_start"] += 1
            await self.close(CLOSE_POLICY, "no start")

    async def send(self, text: str) -> None:
        """Send one message; a caller that cannot take it within `limits.send_s` is cut off (`CallerNotReading`)."""
        try:
            async with asyncio.timeout(self.limits.send_s):
                await self.ws.send_str(text)
        except TimeoutError:
            self.abort(f"caller not reading: a send did not drain in {self.limits.send_s:g} s")
            raise CallerNotReading(self.outcome) from None

    async def close(self, code: int, reason: str) -> None:
        try:
            async with asyncio.timeout(self.limits.send_s):
                await self.ws.close(code=code, message=reason.encode()[:120])
        except TimeoutError:
            self.abort(f"caller not reading: the close did not drain in {self.limits.send_s:g} s")

    def abort(self, why: str) -> None:
        """Drop the connection without a close handshake (which a peer that does not read would never finish)."""
        if self._transport is not None and not self.aborted:
            self.aborted = True
            self.outcome = why
            log.warning("media stream %s from %s aborted: %s", self.session.stream_sid or "(no start)",
                        self.remote, why)
            self.counters["streams_aborted"] += 1
            self._transport.abort()  # type: ignore[attr-defined]
