"""The LLM process: per-call dialogue and streaming generation (backends arrive in a later issue).

At this stage it keeps the set of live calls and honours Cancel ahead of data.
"""

from __future__ import annotations

import logging

from engine.config import Config
from ipc.schema import AnyMsg, CallEnded, CallStarted, Cancel, ProcName, RunInfo
from procs.child import SyncChild, run_sync_child

log = logging.getLogger(__name__)


class LlmProc(SyncChild):
    proc: ProcName = "llm"

    def __init__(self, cfg: Config, run: RunInfo) -> None:
        super().__init__(cfg, run)
        self.calls: dict[str, int] = {}  # call_id -> highest cancelled generation
        self.cancels = 0

    def handle(self, msg: AnyMsg) -> None:
        if isinstance(msg, CallStarted):
            self.calls[msg.call_id] = -1
        elif isinstance(msg, CallEnded):
            self.calls.pop(msg.call_id, None)
        elif isinstance(msg, Cancel):
            self.cancels += 1
            if msg.call_id in self.calls:
                self.calls[msg.call_id] = max(self.calls[msg.call_id], msg.gen)

    def stats(self) -> dict[str, int]:
        return {"calls": len(self.calls), "cancels": self.cancels}


def main(cfg_bytes: bytes, run_bytes: bytes) -> None:
    run_sync_child(LlmProc, cfg_bytes, run_bytes)
