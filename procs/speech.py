"""The speech process: reads every call's inbound ring (VAD and STT arrive in later issues).

One loop serves all calls: it sleeps on the pool's inbound doorbell, wakes when any
call's audio lands, and drains every ring it owns.
"""

from __future__ import annotations

from engine.config import Config
from ipc.ring import RingReader
from ipc.schema import AnyMsg, CallEnded, CallStarted, ProcName, RunInfo
from procs.child import SyncChild, run_sync_child

BUS_POLL_S = 0.02  # longest a bus message waits while audio is flowing


class SpeechProc(SyncChild):
    proc: ProcName = "speech"

    def __init__(self, cfg: Config, run: RunInfo) -> None:
        super().__init__(cfg, run)
        self.readers: dict[str, RingReader] = {}
        self.frames_in = 0
        self.epoch_skips = 0

    def handle(self, msg: AnyMsg) -> None:
        assert self.pool is not None
        if isinstance(msg, CallStarted):
            self.readers[msg.call_id] = RingReader(self.pool.inbound[msg.slot], msg.epoch)
        elif isinstance(msg, CallEnded):
            reader = self.readers.pop(msg.call_id, None)
            if reader is not None:
                reader.discard_all()

    def drain_rings(self) -> int:
        n = 0
        for reader in self.readers.values():
            while reader.read() is not None:
                n += 1
        self.frames_in += n
        return n

    def wait_for_work(self, timeout_s: float) -> None:
        assert self.pool is not None and self.bus is not None
        if not self.readers:
            super().wait_for_work(timeout_s)
            return
        self.poll_bus()
        if self.drain_rings() == 0:
            bell = self.pool.doorbells["inbound"]
            bell.wait(lambda: any(r.ring.available() for r in self.readers.values()),
                      min(timeout_s, BUS_POLL_S), self.cfg.ring.spin_us * 1e-6)
            self.drain_rings()

    def stats(self) -> dict[str, int]:
        return {"calls": len(self.readers), "frames_in": self.frames_in}


def main(cfg_bytes: bytes, run_bytes: bytes) -> None:
    run_sync_child(SpeechProc, cfg_bytes, run_bytes)
