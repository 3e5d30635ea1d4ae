"""The listening socket's limit on open connections: past it, a new connection is dropped at accept.

aiohttp's own sites accept without limit; a flood of idle connections would hold a
file descriptor each until `transport.request_timeout_s` closes them. With the cap,
calls already up keep their sockets whatever arrives.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

from aiohttp import web

log = logging.getLogger("engine.transport")


class ConnectionCap:
    """The listening socket's protocol factory: aiohttp's handler for each connection, up to `limit` open at once;
    past that a connection is dropped at accept, counted, and logged (at most once a second)."""

    def __init__(self, server: web.Server, limit: int, counters: Counter[str]) -> None:
        self.server, self.limit, self.counters = server, limit, counters
        self._logged_at = 0.0

    def __call__(self) -> asyncio.BaseProtocol:
        if len(self.server.connections) < self.limit:
            return self.server()
        self.counters["connections_shed"] += 1
        if (now := time.monotonic()) - self._logged_at >= 1.0:
            self._logged_at = now
            log.warning("connection shed: %d open, transport.max_connections is %d (%d shed so far)",
                        len(self.server.connections), self.limit, self.counters["connections_shed"])
        return _Dropped()


class _Dropped(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()  # type: ignore[attr-defined]
