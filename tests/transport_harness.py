"""The real transport process, spawned alone; the test plays supervisor, speech, llm and tts.

The test owns the ring pool and binds the peers' bus sockets, so it can read what
the transport writes into inbound rings, write bot audio into outbound rings,
and see every CallStarted / CallEnded the transport publishes.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

from ipc.schema import CallStarted
from tools.solo import SoloChild, free_port

AUTH_TOKEN = "test-auth-token-0123456789abcdef"
PUBLIC_URL = "https://voice.example.test"


class TransportHarness(SoloChild):
    def __init__(self, tmp_path: Path, **env: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.recordings = tmp_path / "recordings"
        super().__init__("transport", {
            "ENGINE_TRANSPORT__HOST": "127.0.0.1",
            "ENGINE_TRANSPORT__PORT": str(self.port),
            "ENGINE_TRANSPORT__PUBLIC_URL": PUBLIC_URL,
            "ENGINE_TRANSPORT__STREAM_SECRET": "harness-secret-0123456789abcdef",
            "ENGINE_TRANSPORT__RECORDINGS_DIR": str(self.recordings),
            "ENGINE_TWILIO__AUTH_TOKEN": AUTH_TOKEN,
            "ENGINE_SUPERVISOR__HEARTBEAT_INTERVAL_S": "0.2",
            **env,
        }, ready_timeout=60)

    def call_started(self, timeout: float = 10.0) -> CallStarted:
        started: CallStarted = self.wait_for("speech", CallStarted, timeout)
        return started

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
