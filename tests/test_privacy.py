"""Secrets never reach check-config's output or the logs; phone numbers and what was said only with log_private."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from twilio.request_validator import RequestValidator

from engine.config_load import load_config
from engine.privacy import REDACTED, phone_number, redacted, spoken

SECRETS = {"TWILIO_AUTH_TOKEN": "twilio-token-0123456789", "ENGINE_TRANSPORT__STREAM_SECRET": "stream-secret-0123",
           "ENGINE_LLM__API_KEY": "sk-llm-key-0123456789", "ENGINE_LLM__BACKEND": "openai",
           "ENGINE_LLM__BASE_URL": "https://user:url-password-0123@llm.example.test/v1"}
HIDDEN = ("twilio-token-0123456789", "stream-secret-0123", "sk-llm-key-0123456789", "url-password-0123")


def test_check_config_prints_no_secret_and_its_toml_still_loads(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "engine", "check-config"], capture_output=True, text=True,
                            env={**SECRETS, "PATH": "/usr/bin:/bin"}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert not [s for s in HIDDEN if s in result.stdout]
    printed = tmp_path / "printed.toml"
    printed.write_text(result.stdout)
    back = load_config(printed, environ={})
    assert back == redacted(load_config(environ=SECRETS))
    assert (back.twilio.auth_token, back.llm.api_key, back.llm.base_url) == (
        REDACTED, REDACTED, f"https://user:{REDACTED}@llm.example.test/v1")
    assert back.twilio.account_sid == "" and back.transport.stream_token_ttl_s > 0  # not secrets: as they were


def test_the_config_in_the_debug_log_has_no_secret(monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    import procs.child
    import procs.supervisor
    from tools.cli import main

    for name, value in {**SECRETS, "ENGINE_ENGINE__LOG_LEVEL": "DEBUG"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(procs.child, "setup_logging", lambda level, proc: None)
    monkeypatch.setattr(procs.supervisor, "run_supervisor", lambda cfg: 0)  # only what is logged before it runs
    with caplog.at_level(logging.DEBUG):
        assert main(["supervisor"]) == 0
    assert "auth_token" in caplog.text and REDACTED in caplog.text
    assert not [s for s in HIDDEN if s in caplog.text]


def test_placeholders_unless_private_data_may_be_logged() -> None:
    assert phone_number("+15551234567", shown=False) == "<redacted>"
    assert phone_number("+15551234567", shown=True) == "+15551234567"
    assert phone_number(None, shown=False) == ""
    assert spoken("my card number is 4111", shown=False) == "<22 chars>"
    assert spoken("hello", shown=True) == "'hello'"


@pytest.mark.parametrize("log_private", [False, True])
def test_the_answered_call_log_line_shows_numbers_only_with_log_private(tmp_path: Path, log_private: bool,
                                                                         capfd: pytest.CaptureFixture[str]) -> None:
    from tests.test_transport_live import post_form
    from tests.transport_harness import AUTH_TOKEN, PUBLIC_URL, TransportHarness

    h = TransportHarness(tmp_path, ENGINE_ENGINE__LOG_PRIVATE=str(log_private).lower())
    try:
        params = {"CallSid": "CA" + "7" * 32, "From": "+15550001111", "To": "+15550002222", "CallStatus": "ringing"}
        signature = RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC_URL + "/twilio/voice", params)
        assert post_form(h.base_url + "/twilio/voice", params, signature)[0] == 200
    finally:
        h.close()
    (line,) = [line for line in capfd.readouterr().err.splitlines() if "answered" in line and "CA777" in line]
    assert ("+15550001111" in line and "+15550002222" in line) is log_private
    assert ("<redacted> -> <redacted>" in line) is not log_private
