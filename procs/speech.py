"""The speech process: reads every call's inbound ring (VAD and STT arrive in later issues).

One loop serves all calls: it sleeps on the pool's inbound doorbell, wakes when any
call's audio lands, and drains every ring it owns.
"""

from __future__ import annotations

from engine.calls import CallTable
from engine.config import Config
from ipc.ring import RingReader
from ipc.schema import AnyMsg, CallEnded, CallStarted, ProcName, RunInfo
from procs.child import SyncChild, run_sync_child

BUS_POLL_S = 0.02  # longest a bus message waits while audio is flowing


class SpeechProc(SyncChild):
    proc: ProcName = "speech"

    def __init__(self, cfg: Config, run: RunInfo) -> None:
        super().__init__(cfg, run)
        self.calls: CallTable[RingReader] = CallTable()
        self.frames_in = 0
        self.epoch_skips = 0

    def setup(self) -> None:
        assert self.pool is not None
        self.pool.doorbells["inbound"].reset_waiters()  # we are its only sleeper

    def handle(self, msg: AnyMsg) -> None:
        assert self.pool is not None
        if isinstance(msg, CallStarted):
            self.calls.start(msg.slot, msg.epoch, msg.call_id, RingReader(self.pool.inbound[msg.slot], msg.epoch))
        elif isinstance(msg, CallEnded):
            ended = self.calls.end(msg.slot, msg.epoch)
            if ended is not None:
                ended.state.discard_all()

    def drain_rings(self) -> int:
        n = 0
        for call in self.calls.values():
            while call.state.read() is not None:
                n += 1
        self.frames_in += n
        return n

    def wait_for_work(self, timeout_s: float) -> None:
        assert self.pool is not None and self.bus is not None
        if not len(self.calls):
            super().wait_for_work(timeout_s)
            return
        self.poll_bus()
        if self.drain_rings() == 0:
            bell = self.pool.doorbells["inbound"]
            readers = [c.state for c in self.calls.values()]
            bell.wait(lambda: any(r.ring.available() for r in readers),
                      min(timeout_s, BUS_POLL_S), self.cfg.ring.spin_us * 1e-6)
            self.drain_rings()

    def stats(self) -> dict[str, int]:
        return {"calls": len(self.calls), "frames_in": self.frames_in}


def main(cfg_bytes: bytes, run_bytes: bytes) -> None:
    run_sync_child(SpeechProc, cfg_bytes, run_bytes)
