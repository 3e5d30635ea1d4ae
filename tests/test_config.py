"""Configuration errors are one line that names the key and where the value came from."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

from engine.config import Config
from engine.config_load import ConfigError, load_config


def test_defaults_are_valid() -> None:
    cfg = load_config(environ={})
    assert cfg.engine.max_calls == 16 and cfg.ring.slots == 64
    assert Config.from_bytes(cfg.to_bytes()) == cfg


def test_file_then_environment(tmp_path: Path) -> None:
    path = tmp_path / "engine.toml"
    path.write_text('[engine]\nmax_calls = 4\n[transport]\nport = 9000\n')
    cfg = load_config(path, environ={"ENGINE_TRANSPORT__PORT": "9100", "ENGINE_LLM__BACKEND": "openai",
                                     "ENGINE_LLM__BASE_URL": "http://llm.internal:8000/v1"})
    assert (cfg.engine.max_calls, cfg.transport.port, cfg.llm.backend) == (4, 9100, "openai")


@pytest.mark.parametrize(
    ("toml", "env", "expected"),
    [
        ("[transport]\nport = 70000\n", {},
         "config error: transport.port = 70000 (from {path}): Expected `int` <= 65535"),
        ("", {"ENGINE_TRANSPORT__PORT": "http"},
         "transport.port = 'http' (from ENGINE_TRANSPORT__PORT): Expected `int`"),
        ("[ring]\nslots = 48\n", {}, "ring.slots = 48 (from {path}): must be a power of two"),
        ("[engine]\nmax_calls = 0\n", {}, "engine.max_calls = 0"),
        ("[llm]\nbackend = \"gpt\"\n", {}, "llm.backend = 'gpt'"),
        ("[transport]\nprot = 1\n", {}, "transport.prot (from {path}): unknown key"),
        ("[trasnport]\nport = 1\n", {}, "[trasnport]: unknown section"),
        ("", {"ENGINE_TTS__STREAM": "[1, 2]"}, "tts.stream"),
        ("", {"ENGINE_NOPE__X": "1"}, "ENGINE_NOPE__X: no section [nope]"),
        ("[engine\n", {}, "not valid TOML"),
        ("[supervisor]\nheartbeat_timeout_s = 0.5\n", {}, "supervisor.heartbeat_timeout_s = 0.5"),
        ("[transport]\npublic_url = \"example.com\"\n", {}, "transport.public_url"),
    ],
)
def test_bad_value_gives_one_line_naming_the_key(tmp_path: Path, toml: str, env: dict[str, str], expected: str) -> None:
    path = tmp_path / "engine.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=env)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("config error: ")
    assert expected.format(path=path) in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.toml", environ={})


def test_cli_prints_the_error_and_exits_2(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "engine", "check-config"], capture_output=True, text=True,
                            env={"ENGINE_RING__SLOTS": "3", "PATH": "/usr/bin:/bin"}, timeout=60)
    assert result.returncode == 2
    expected = "config error: ring.slots = 3 (from ENGINE_RING__SLOTS): must be a power of two"
    assert result.stderr.strip().splitlines() == [expected]


def test_cli_prints_a_valid_config_as_toml_that_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "engine.toml"
    path.write_text('[engine]\nmax_calls = 3\n[conversation]\ngreeting = "Hi, \\"caller\\"."\n')
    env = {"ENGINE_TRANSPORT__PORT": "9123", "ENGINE_FAULTS__CRASH_ON_START": '["llm"]'}
    result = subprocess.run([sys.executable, "-m", "engine", "--config", str(path), "check-config"],
                            capture_output=True, text=True, env={**env, "PATH": "/usr/bin:/bin"}, timeout=60)
    assert result.returncode == 0, result.stderr
    printed = tomllib.loads(result.stdout)
    assert printed["engine"]["max_calls"] == 3 and printed["transport"]["port"] == 9123
    assert printed["conversation"]["greeting"] == 'Hi, "caller".'
    assert printed["faults"]["crash_on_start"] == ["llm"]
    again = tmp_path / "printed.toml"
    again.write_text(result.stdout)
    assert load_config(again, environ={}) == load_config(path, environ=env)


def test_a_string_setting_from_the_environment_is_taken_as_written() -> None:
    cfg = load_config(environ={"ENGINE_CONVERSATION__TRANSFER_TO": "+15551234567", "ENGINE_TTS__VOICE": "[1, 2]",
                               "TWILIO_ACCOUNT_SID": "AC" + "0" * 32, "TWILIO_AUTH_TOKEN": "token",
                               "ENGINE_CONVERSATION__GREETING": '"Hi there"', "ENGINE_TRANSPORT__PORT": "9100"})
    assert cfg.conversation.transfer_to == "+15551234567"  # TOML would read a number, and the key would be refused
    assert cfg.tts.voice == "[1, 2]" and cfg.conversation.greeting == "Hi there" and cfg.transport.port == 9100


def test_settings_that_need_others_name_what_is_missing() -> None:
    with pytest.raises(ConfigError, match=r"end_webhook_secret.*at least 16"):
        load_config(environ={"ENGINE_CONVERSATION__END_WEBHOOK": "https://ops.example.com/ended"})
    with pytest.raises(ConfigError, match=r"twilio\.account_sid and twilio\.auth_token"):
        load_config(environ={"ENGINE_CONVERSATION__TRANSFER_TO": "+15557654321"})
    with pytest.raises(ConfigError, match=r"E\.164 number"):
        load_config(environ={"ENGINE_CONVERSATION__TRANSFER_TO": "reception"})
