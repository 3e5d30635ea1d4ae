"""The control bus: ZeroMQ PUSH/PULL over ipc sockets in the run's runtime directory.

Every process binds two PULL sockets, `<name>.urgent` and `<name>.data`, and
connects PUSH sockets to every engine peer when its bus opens (a bounded set: no
first message pays for a connect, and a process's file descriptors do not grow
when a peer it never talked to is first needed; other names connect on demand).

Order: one PUSH socket per sender and lane, and ZeroMQ keeps a socket's messages in
order, so everything one sender sends one receiver on the data lane arrives as it
was sent. Only `Cancel` and `Shutdown` (classes marked urgent) take the urgent lane,
which `recv` always drains first: a barge-in's cancel never waits behind a backlog
of sentences. Sends never block: a peer that is down and whose queue is full costs
a counted drop, not a stalled sender.

`Bus` is for threads that block; `AsyncBus` for the transport's asyncio loop.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import msgspec
import zmq
import zmq.asyncio

from ipc.schema import PROC_NAMES, AnyMsg, Codec, Msg

log = logging.getLogger(__name__)

SEND_HWM = 10_000
ENGINE_PEERS = ("supervisor", *PROC_NAMES)


def endpoint(runtime_dir: Path, name: str, lane: str) -> str:
    return f"ipc://{runtime_dir}/{name}.{lane}"


class _Sending:
    """PUSH sockets to peers: the engine's made at once, others on first use. Sends never block."""

    def __init__(self, ctx: Any, runtime_dir: Path, own_name: str = "") -> None:
        self.runtime_dir = Path(runtime_dir)
        self.codec = Codec()
        self.dropped_sends = 0
        self._ctx = ctx
        self._peers: dict[tuple[str, bool], Any] = {}
        for peer in ENGINE_PEERS:
            if peer != own_name:
                self._peer(peer, True)
                self._peer(peer, False)

    def _peer(self, dest: str, urgent: bool) -> Any:
        key = (dest, urgent)
        sock = self._peers.get(key)
        if sock is None:
            sock = self._ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, SEND_HWM)
            sock.connect(endpoint(self.runtime_dir, dest, "urgent" if urgent else "data"))
            self._peers[key] = sock
        return sock

    def send(self, dest: str, msg: Msg) -> bool:
        """Queue `msg` for `dest`; False (and counted) if its queue is full. Never blocks.

        On an asyncio socket too, NOBLOCK completes at once or raises Again.
        """
        try:
            self._peer(dest, msg.urgent).send(self.codec.encode(msg), zmq.NOBLOCK)
            return True
        except zmq.Again:
            self.dropped_sends += 1
            return False

    def _close_peers(self) -> None:
        for sock in self._peers.values():
            sock.close(linger=0)
        self._peers.clear()


class Sender(_Sending):
    """Send-only bus handle for a worker thread (a ZeroMQ socket belongs to one thread)."""

    def __init__(self, runtime_dir: Path, ctx: zmq.Context[Any] | None = None) -> None:
        self._own_ctx = ctx is None
        super().__init__(ctx or zmq.Context(), runtime_dir)

    def close(self) -> None:
        self._close_peers()
        if self._own_ctx:
            self._ctx.term()


class _BusBase(_Sending):
    """A process's two receiving lanes plus sending."""

    def __init__(self, ctx: Any, runtime_dir: Path, name: str) -> None:
        super().__init__(ctx, runtime_dir, name)
        self.name = name
        self.bad_messages = 0
        self._urgent = ctx.socket(zmq.PULL)
        self._data = ctx.socket(zmq.PULL)
        for sock, lane in ((self._urgent, "urgent"), (self._data, "data")):
            sock.setsockopt(zmq.LINGER, 0)
            sock.bind(endpoint(self.runtime_dir, name, lane))

    def _decode(self, data: bytes) -> AnyMsg | None:
        try:
            return self.codec.decode(data)
        except (msgspec.DecodeError, RecursionError) as exc:  # RecursionError: nested past msgspec's depth limit
            self.bad_messages += 1
            log.error("%s: dropped an undecodable bus message (%d B): %s", self.name, len(data), exc)
            return None

    def close(self) -> None:
        self._urgent.close(linger=0)
        self._data.close(linger=0)
        self._close_peers()


class Bus(_BusBase):
    """Blocking bus endpoint for one thread of one process."""

    def __init__(self, runtime_dir: Path, name: str, ctx: zmq.Context[Any] | None = None) -> None:
        self._own_ctx = ctx is None
        super().__init__(ctx or zmq.Context(), runtime_dir, name)
        self._poller = zmq.Poller()
        self._poller.register(self._urgent, zmq.POLLIN)
        self._poller.register(self._data, zmq.POLLIN)

    def recv_nowait(self) -> AnyMsg | None:
        for sock in (self._urgent, self._data):
            while True:
                try:
                    data = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                msg = self._decode(data)
                if msg is not None:
                    return msg
        return None

    def recv(self, timeout_s: float) -> AnyMsg | None:
        """Next message, urgent first; None after `timeout_s` without one."""
        msg = self.recv_nowait()
        if msg is not None or timeout_s <= 0:
            return msg
        if self._poller.poll(int(timeout_s * 1000) or 1):
            return self.recv_nowait()
        return None

    def register(self, poller: zmq.Poller) -> None:
        """Add the bus's sockets to a caller's poller (to wait on the bus and other fds)."""
        poller.register(self._urgent, zmq.POLLIN)
        poller.register(self._data, zmq.POLLIN)

    def close(self) -> None:
        super().close()
        if self._own_ctx:
            self._ctx.term()


class AsyncBus(_BusBase):
    """Bus endpoint for an asyncio loop."""

    def __init__(self, runtime_dir: Path, name: str) -> None:
        super().__init__(zmq.asyncio.Context(), runtime_dir, name)
        self._poller = zmq.asyncio.Poller()
        self._poller.register(self._urgent, zmq.POLLIN)
        self._poller.register(self._data, zmq.POLLIN)

    async def recv(self) -> AnyMsg:
        """Next message, urgent first."""
        while True:
            for sock in (self._urgent, self._data):
                try:
                    data = await sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    continue
                msg = self._decode(data)
                if msg is not None:
                    return msg
            await self._poller.poll()

    def close(self) -> None:
        super().close()
        self._ctx.term()
