"""The TTS process: the producer of every call's outbound ring (synthesis arrives in a later issue)."""

from __future__ import annotations

from engine.calls import CallTable
from engine.config import Config
from ipc.ring import RingWriter
from ipc.schema import AnyMsg, CallEnded, CallStarted, Cancel, ProcName, RunInfo
from procs.child import SyncChild, run_sync_child


class TtsProc(SyncChild):
    proc: ProcName = "tts"

    def __init__(self, cfg: Config, run: RunInfo) -> None:
        super().__init__(cfg, run)
        self.calls: CallTable[RingWriter] = CallTable()
        self.cancels = 0

    def handle(self, msg: AnyMsg) -> None:
        assert self.pool is not None
        if isinstance(msg, CallStarted):
            self.calls.start(msg.slot, msg.epoch, msg.call_id, RingWriter(self.pool.outbound[msg.slot], msg.epoch))
        elif isinstance(msg, CallEnded):
            self.calls.end(msg.slot, msg.epoch)
        elif isinstance(msg, Cancel):
            self.cancels += 1

    def stats(self) -> dict[str, int]:
        return {"calls": len(self.calls), "cancels": self.cancels}


def main(cfg_bytes: bytes, run_bytes: bytes) -> None:
    run_sync_child(TtsProc, cfg_bytes, run_bytes)
