"""`python -m engine dial` against a whole engine: as Twilio, through the playground, and when it cannot call.

One engine serves the module, on the echo backend (it answers "You said: <the caller's words>."), so what the
bot says is known; the caller speaks with Piper's voice and the engine hears it with Whisper. dial runs in this
process (tools.cli.main), its lines read from stdout.
"""

from __future__ import annotations

import http.server
import os
import re
import threading
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tools.caller import piper_speech
from tools.cli import main
from tools.engine_run import EngineRun, serve
from tools.solo import free_port

AUTH = "dial-test-auth-token"
PUBLIC = "https://voice.dial.test"
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineRun]:
    run = EngineRun(tmp_path_factory.mktemp("dial"), ENGINE_TRANSPORT__PUBLIC_URL=PUBLIC,
                    ENGINE_TWILIO__AUTH_TOKEN=AUTH, ENGINE_LLM__BACKEND="echo", ENGINE_PLAYGROUND__ENABLED="true",
                    ENGINE_CONVERSATION__GREETING="Hello, this is the test line.")
    yield from serve(run)


@pytest.fixture(autouse=True)
def no_engine_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """dial reads its configuration as every command does: here only from the file each test writes."""
    for name in list(os.environ):
        if name.startswith(("ENGINE_", "TWILIO_")):
            monkeypatch.delenv(name)


def config_file(tmp_path: Path, port: int, auth_token: str | None = None) -> str:
    """dial's configuration: the engine's port and, to call as Twilio, its public URL and an auth token."""
    text = f"[transport]\nport = {port}\n"
    if auth_token is not None:
        text += f'public_url = "{PUBLIC}"\n\n[twilio]\nauth_token = "{auth_token}"\n'
    path = tmp_path / "dial.toml"
    path.write_text(text)
    return str(path)


def loudest_rms(samples: np.ndarray) -> float:
    """The RMS of the loudest 20 ms window (8 kHz)."""
    frames = samples[:len(samples) // 160 * 160].astype(np.float64).reshape(-1, 160)
    return float(np.sqrt((frames ** 2).mean(axis=1)).max()) if len(frames) else 0.0


def assert_the_turns_were_heard_and_answered(out: str, turns: int) -> None:
    heard = [line for line in out.splitlines() if line.startswith("engine  heard:")]
    assert len(heard) == turns, out
    assert all(len({"capital", "france"} & set(re.findall(r"[a-z]+", line.lower()))) >= 1 for line in heard), out
    assert len(re.findall(r'^bot .*\(voice-to-voice \d+ ms\): "You said: ', out, re.M)) == turns, out


def test_dial_calls_as_twilio_prints_each_turn_and_writes_both_sides(engine: EngineRun, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    question = tmp_path / "question.wav"  # the second turn from a file, at another rate than the line's
    with wave.open(str(question), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(piper_speech(QUESTION, rate=16000).astype("<i2").tobytes())
    wav_path = tmp_path / "call.wav"
    status = main(["--config", config_file(tmp_path, engine.port, AUTH), "dial", "--say", QUESTION,
                   "--wav", str(question), "--out", str(wav_path)])
    out, err = capsys.readouterr()
    assert status == 0, out + err
    assert "as Twilio" in out and f'said: "{QUESTION}"' in out and f"said: {question}" in out, out
    assert re.search(r'^bot .*\(greeting\): "Hello, this is the test line\."', out, re.M), out
    assert_the_turns_were_heard_and_answered(out, 2)
    with wave.open(str(wav_path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 8000)
        stereo = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, 2)
    assert loudest_rms(stereo[:, 0]) > 500, "the caller's side is silent"
    assert loudest_rms(stereo[:, 1]) > 500, "the bot's side is silent"


def test_dial_with_the_wrong_auth_token_is_refused_and_says_why(engine: EngineRun, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["--config", config_file(tmp_path, engine.port, "not-the-engine-token"), "dial", "--say", QUESTION,
                   "--out", str(tmp_path / "call.wav")])
    err = capsys.readouterr().err
    assert status == 2
    assert "refused the call" in err and "HTTP 403" in err and "twilio.auth_token" in err, err
    assert not (tmp_path / "call.wav").exists()


def test_dial_through_the_playground_needs_no_twilio_settings(engine: EngineRun, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    wav_path = tmp_path / "call.wav"
    status = main(["--config", config_file(tmp_path, engine.port), "dial", "--say", QUESTION, "--out", str(wav_path)])
    out, err = capsys.readouterr()
    assert status == 0, out + err
    assert "through the playground" in out
    assert_the_turns_were_heard_and_answered(out, 1)
    assert wav_path.exists()


def test_dial_says_when_the_engine_cannot_be_reached(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()  # nothing listens there
    status = main(["--config", config_file(tmp_path, port, AUTH), "dial", "--say", QUESTION])
    assert status == 2
    assert f"cannot reach the engine at http://127.0.0.1:{port}" in capsys.readouterr().err


def test_dial_without_twilio_settings_says_how_to_open_the_playground(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # an engine whose playground is off has no such path
            self.send_error(404)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        status = main(["--config", config_file(tmp_path, server.server_address[1]), "dial", "--say", QUESTION])
    finally:
        server.shutdown()
        server.server_close()
    err = capsys.readouterr().err
    assert status == 2
    assert "ENGINE_PLAYGROUND__ENABLED=true" in err and "twilio.auth_token" in err, err
