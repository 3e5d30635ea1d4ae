"""What happens once a call is over, off every call's path: its transcript kept and sent, its caller remembered.

- **transcript.json**, beside the call's recording (engine.recorder writes it on its
  own thread), when `transport.recordings_dir` is set.
- **The call-end webhook**: with `conversation.end_webhook`, the same document is
  POSTed there as JSON, signed (`X-Engine-Signature`, engine.call_transcript), with
  `end_webhook_attempts` tries of at most `end_webhook_timeout_s` each, 1, 2, 4... s
  apart. A receiver that is down, slow or refusing never holds up a call: each
  delivery is a task of its own, at most `MAX_DELIVERIES` at once (more are dropped
  and counted). On shutdown, deliveries still going get `SHUTDOWN_GRACE_S`.
- **Memory** (engine.memory): with `memory.enabled`, the call's heard-only dialogue is
  kept for the caller's number on a worker thread, and a new call's is recalled.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from engine.admission import Party
from engine.call_transcript import signature
from engine.config import Config
from engine.memory import CallerMemory
from engine.recorder import Recorder
from ipc.schema import HistoryTurn

log = logging.getLogger("engine.transport")

MAX_DELIVERIES = 256
KEPT_TRANSCRIPTS = 200
SHUTDOWN_GRACE_S = 5.0
GIVE_UP_STATUS = range(400, 500)
RETRY_STATUS = frozenset({408, 429})


class AfterCall:
    """The transport's one keeper of what outlives a call: transcripts, the call-end webhook, memory."""

    def __init__(self, cfg: Config, recorder: Recorder | None, counters: Counter[str]) -> None:
        self.cfg = cfg.conversation
        self.recorder = recorder
        self.counters = counters
        mem = cfg.memory
        self.memory = CallerMemory(Path(mem.path), mem.max_turns, mem.retention_days) if mem.enabled else None
        self.transcripts: OrderedDict[str, dict[str, Any]] = OrderedDict()
        """The latest `KEPT_TRANSCRIPTS` calls' transcripts, by call sid (GET /calls/{sid}/transcript)."""
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def recall(self, party: Party) -> list[HistoryTurn]:
        """What is remembered of the caller (nothing without memory, or for a number not known)."""
        if self.memory is None or not party.number:
            return []
        try:
            return await asyncio.to_thread(self.memory.recall, party.number)
        except Exception:  # a broken memory costs the caller their past, not their call
            log.exception("memory: recall failed")
            self.counters["memory_errors"] += 1
            return []

    def call_over(self, call_id: str, transcript: dict[str, Any], party: Party, heard: list[HistoryTurn]) -> None:
        """The call ended with this transcript and heard-only dialogue: keep and send them. Never waits."""
        self.transcripts[call_id] = transcript
        while len(self.transcripts) > KEPT_TRANSCRIPTS:
            self.transcripts.popitem(last=False)
        if self.recorder is not None:
            self.recorder.close(call_id, transcript)
        if self.cfg.end_webhook:
            if len(self._tasks) >= MAX_DELIVERIES:
                self.counters["end_webhook_dropped"] += 1
                log.warning("call %s: end webhook not sent: %d deliveries are still going", call_id, len(self._tasks))
            else:
                self._spawn(self._deliver(call_id, msgspec.json.encode(transcript)))
        if self.memory is not None and party.number:
            self._spawn(self._remember(call_id, party.number, heard))

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _remember(self, call_id: str, number: str, heard: list[HistoryTurn]) -> None:
        assert self.memory is not None
        try:
            await asyncio.to_thread(self.memory.remember, number, call_id, heard)
            await asyncio.to_thread(self.memory.prune)
        except Exception:
            log.exception("memory: call %s not remembered", call_id)
            self.counters["memory_errors"] += 1

    async def _deliver(self, call_id: str, body: bytes) -> None:
        """POST the transcript until the receiver takes it, a 4xx says it never will, or the attempts run out."""
        cfg = self.cfg
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=cfg.end_webhook_timeout_s))
        delivery = uuid.uuid4().hex
        why = ""
        for attempt in range(1, cfg.end_webhook_attempts + 1):
            headers = {"Content-Type": "application/json", "User-Agent": "voice-engine",
                       "X-Engine-Signature": signature(cfg.end_webhook_secret, int(time.time()), body),
                       "X-Engine-Delivery": delivery, "X-Engine-Attempt": str(attempt)}
            try:
                async with self._session.post(cfg.end_webhook, data=body, headers=headers,
                                              allow_redirects=False) as answer:
                    if 200 <= answer.status < 300:
                        self.counters["end_webhook_delivered"] += 1
                        return
                    why = f"HTTP {answer.status}"
                    if answer.status in GIVE_UP_STATUS and answer.status not in RETRY_STATUS:
                        break
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if attempt < cfg.end_webhook_attempts:
                await asyncio.sleep(min(2.0 ** (attempt - 1), 30.0))
        self.counters["end_webhook_failed"] += 1
        log.warning("call %s: end webhook not delivered after %d attempt(s): %s", call_id, attempt, why)

    async def close(self) -> None:
        """At shutdown: what is still going gets a moment to finish; then the HTTP session and memory close."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=SHUTDOWN_GRACE_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        if self.memory is not None:
            self.memory.close()
