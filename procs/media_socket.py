"""One Twilio Media Streams WebSocket read as protocol events: the socket side of a call, before and after `start`.

`MediaSocket.events()` yields what the protocol core (`MediaStreamSession`) makes of
each message, with the time it arrived. It ends when the socket closes, goes silent
for `transport.stream_idle_timeout_s` (a network that died without a FIN), sends
something the protocol refuses (the socket is closed with the code the core gives),
or the caller's `stop`; `outcome` then says which. The transport reads it up to the
`start`; the call (`procs.phone_call`) reads the rest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from engine.media_stream import Audio, Dtmf, MarkEcho, MediaStreamSession, Reject, Started, Stopped

log = logging.getLogger("engine.transport")

StreamEvent = Started | Audio | Dtmf | MarkEcho
_CLOSED = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED)


class MediaSocket:
    """A Media Streams socket and its protocol state; `events()` is read once, by whoever holds it."""

    def __init__(self, ws: web.WebSocketResponse, session: MediaStreamSession, idle_s: float,
                 counters: Counter[str], remote: str | None) -> None:
        self.ws = ws
        self.session = session
        self.idle_s = idle_s
        self.counters = counters
        self.remote = remote
        self.outcome = "socket closed without stop"

    async def events(self) -> AsyncIterator[tuple[int, StreamEvent]]:
        """(arrival time in monotonic ns, event) for each message that means something, until the stream ends."""
        while True:
            try:
                msg = await self.ws.receive(timeout=self.idle_s)
            except asyncio.TimeoutError:
                self.outcome = f"stream silent for {self.idle_s:g} s"
                log.warning("media stream %s: %s; treating the caller as gone", self.session.stream_sid, self.outcome)
                await self.ws.close(code=1001, message=b"stream idle")
                return
            if msg.type in _CLOSED:
                return
            t_ns = time.monotonic_ns()
            if msg.type == aiohttp.WSMsgType.TEXT:
                event = self.session.receive(msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                event = self.session.receive_binary()
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

    async def close(self, code: int, reason: str) -> None:
        await self.ws.close(code=code, message=reason.encode()[:120])
