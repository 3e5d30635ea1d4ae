"""The LLM process: per-call dialogue and streaming generation (backends arrive in a later issue).

At this stage it keeps the set of live calls and honours Cancel ahead of data.
"""

from __future__ import annotations

import logging

from engine.calls import CallTable
from engine.config import Config
from ipc.schema import AnyMsg, CallEnded, CallStarted, Cancel, ProcName, RunInfo
from procs.child import SyncChild, run_sync_child

log = logging.getLogger(__name__)


class LlmProc(SyncChild):
    proc: ProcName = "llm"

    def __init__(self, cfg: Config, run: RunInfo) -> None:
        super().__init__(cfg, run)
        self.calls: CallTable[list[int]] = CallTable()  # per call: the generations cancelled
        self.cancels = 0

    def handle(self, msg: AnyMsg) -> None:
        if isinstance(msg, CallStarted):
            self.calls.start(msg.slot, msg.epoch, msg.call_id, [])
        elif isinstance(msg, CallEnded):
            self.calls.end(msg.slot, msg.epoch)
        elif isinstance(msg, Cancel):
            self.cancels += 1
            call = self.calls.find(msg.call_id)
            if call is not None:
                call.state.append(msg.gen)

    def stats(self) -> dict[str, int]:
        return {"calls": len(self.calls), "cancels": self.cancels}


def main(cfg_bytes: bytes, run_bytes: bytes) -> None:
    run_sync_child(LlmProc, cfg_bytes, run_bytes)
