"""Reading the configuration: a TOML file, then `ENGINE_<SECTION>__<KEY>` environment overrides, validated.

Everything is validated at start-up. A bad value is reported on one line that names
the key and where it came from, e.g.

    config error: transport.port = 70000 (from ENGINE_TRANSPORT__PORT): Expected `int` <= 65535
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect

from engine.config import E164, Config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_PREFIX = "ENGINE_"


class ConfigError(ValueError):
    """A configuration problem, phrased so a person can fix it."""


def _parse_env_value(raw: str) -> Any:
    """Environment values are TOML values when they parse as one (42, 0.5, true, ["a"]), else strings."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _string_keys(section: str) -> set[str]:
    """The keys of `[section]` whose values are strings."""
    struct = next(f.type for f in msgspec.structs.fields(Config) if f.name == section)
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    return {f.name for f in info.fields if isinstance(f.type, msgspec.inspect.StrType)}


def _env_overrides(environ: dict[str, str]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    sections = {f.name for f in msgspec.structs.fields(Config)}
    overrides: dict[str, dict[str, Any]] = {}
    origin: dict[str, str] = {}
    for var, raw in environ.items():
        m = re.fullmatch(rf"{ENV_PREFIX}([A-Z0-9_]+?)__([A-Z0-9_]+)", var)
        if not m:
            continue
        section, key = m.group(1).lower(), m.group(2).lower()
        if section not in sections:
            raise ConfigError(f"config error: {var}: no section [{section}] (sections: {', '.join(sorted(sections))})")
        # A string setting takes the value as written unless it is a quoted TOML string: a phone number (+15551234567)
        # or digits would parse as a number.
        value = _parse_env_value(raw)
        overrides.setdefault(section, {})[key] = raw if key in _string_keys(section) and not isinstance(value, str) \
            else value
        origin[f"{section}.{key}"] = var
    return overrides, origin


def _validation_message(exc: msgspec.ValidationError, data: dict[str, Any], origin: dict[str, str]) -> str:
    text = str(exc)
    unknown = re.fullmatch(r"Object contains unknown field `(\w+)`(?: - at `\$\.(\w+)`)?", text)
    if unknown:
        field, section = unknown.group(1), unknown.group(2)
        if section is None:
            return f"config error: [{field}]: unknown section"
        key = f"{section}.{field}"
        hint = f" (from {origin[key]})" if key in origin else ""
        return f"config error: {key}{hint}: unknown key"
    located = re.search(r" - at `\$\.([\w.\[\]]+)`$", text)
    if not located:
        return f"config error: {text}"
    key = located.group(1)
    reason = text[: located.start()]
    section, _, field = key.partition(".")
    value = data.get(section, {}).get(field) if field else None
    shown = f" = {value!r}" if field and value is not None else ""
    hint = f" (from {origin[key]})" if key in origin else ""
    return f"config error: {key}{shown}{hint}: {reason}"


def load_config(path: str | Path | None = None, environ: dict[str, str] | None = None) -> Config:
    """Read, merge and validate the configuration; raises ConfigError with a one-line message."""
    data: dict[str, Any] = {}
    origin: dict[str, str] = {}
    if path is not None:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config error: file not found: {p}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config error: {p}: not valid TOML: {exc}") from None
        for section, values in data.items():
            if isinstance(values, dict):
                for key in values:
                    origin[f"{section}.{key}"] = str(p)
    env = dict(os.environ if environ is None else environ)
    for key in ("account_sid", "auth_token", "from_number"):
        if env.get(f"TWILIO_{key.upper()}"):
            data.setdefault("twilio", {}).setdefault(key, env[f"TWILIO_{key.upper()}"])
            origin.setdefault(f"twilio.{key}", f"TWILIO_{key.upper()}")
    overrides, env_origin = _env_overrides(env)
    for section, values in overrides.items():
        existing = data.setdefault(section, {})
        if not isinstance(existing, dict):
            raise ConfigError(f"config error: {section}: expected a table")
        existing.update(values)
    origin.update(env_origin)
    try:
        cfg = msgspec.convert(data, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(_validation_message(exc, data, origin)) from None
    _check(cfg, origin)
    return cfg


def _check(cfg: Config, origin: dict[str, str]) -> None:
    """Rules that span values or need more than a type."""

    def fail(key: str, value: Any, why: str) -> None:
        hint = f" (from {origin[key]})" if key in origin else ""
        raise ConfigError(f"config error: {key} = {value!r}{hint}: {why}")

    slots = cfg.ring.slots
    if slots & (slots - 1):
        fail("ring.slots", slots, "must be a power of two")
    if cfg.llm.backend == "openai" and not cfg.llm.base_url:
        fail("llm.base_url", "", "the openai backend needs the server's /v1 URL")
    if cfg.speech.pause_ms >= cfg.speech.end_silence_ms:
        fail("speech.pause_ms", cfg.speech.pause_ms, "must be shorter than speech.end_silence_ms")
    if cfg.speech.solo_pause_ms >= cfg.speech.end_silence_ms:
        fail("speech.solo_pause_ms", cfg.speech.solo_pause_ms, "must be shorter than speech.end_silence_ms")
    if cfg.supervisor.heartbeat_timeout_s <= 2 * cfg.supervisor.heartbeat_interval_s:
        fail("supervisor.heartbeat_timeout_s", cfg.supervisor.heartbeat_timeout_s,
             "must exceed twice supervisor.heartbeat_interval_s")
    # ipc:// socket paths are limited to 107 bytes; check the longest one this config can produce.
    longest = cfg.runtime_base / f"{cfg.engine.instance}-4194304" / "supervisor.urgent"
    if len(str(longest)) > 107:
        fail("engine.runtime_dir", str(cfg.runtime_base),
             f"too long: socket paths such as {longest} exceed the 107-byte Unix socket limit")
    if cfg.transport.public_url and not re.fullmatch(r"https?://[^/\s]+", cfg.transport.public_url.rstrip("/")):
        fail("transport.public_url", cfg.transport.public_url,
             "must be an http(s) URL with no path, such as https://voice.example.com")
    conversation = cfg.conversation
    if conversation.end_webhook and not re.fullmatch(r"https?://[^/\s]+(/\S*)?", conversation.end_webhook):
        fail("conversation.end_webhook", conversation.end_webhook, "must be an http(s) URL")
    if conversation.end_webhook and len(conversation.end_webhook_secret) < 16:
        fail("conversation.end_webhook_secret", "(redacted)" if conversation.end_webhook_secret else "",
             "conversation.end_webhook needs a secret of at least 16 characters to sign what it sends")
    transfer_to = conversation.transfer_to
    if transfer_to and not (E164.fullmatch(transfer_to) or re.fullmatch(r"sips?:\S+@\S+", transfer_to)):
        fail("conversation.transfer_to", conversation.transfer_to,
             "must be an E.164 number such as +15551234567 or a sip: URI")
    if conversation.transfer_to and not (cfg.twilio.account_sid and cfg.twilio.auth_token):
        fail("conversation.transfer_to", conversation.transfer_to,
             "putting a call through needs twilio.account_sid and twilio.auth_token (TWILIO_ACCOUNT_SID, "
             "TWILIO_AUTH_TOKEN) for Twilio's REST API")
    if cfg.twilio.from_number and not E164.fullmatch(cfg.twilio.from_number):
        fail("twilio.from_number", cfg.twilio.from_number, "must be an E.164 number such as +15551234567")
