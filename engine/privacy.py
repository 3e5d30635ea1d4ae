"""What of a call may reach the logs, and the configuration with its secrets hidden.

Logs are read by more people, kept longer and shipped further than recordings (which are private files,
engine/recorder.py). Unless `engine.log_private` is on, a log line carries no phone number and none of what
the caller or the bot said: `phone_number` and `spoken` give a placeholder instead. `redacted` hides every
secret of a configuration (credentials, signing keys, API keys, a password in a URL) wherever it is shown:
`python -m engine check-config`, a DEBUG log.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec

from engine.config import Config

REDACTED = "***redacted***"
_SECRET_KEY = re.compile(r"(?:^|_)(?:secret|token|password|passwd|passphrase|key|credentials?)$")


def phone_number(number: str | None, shown: bool) -> str:
    """`number` for a log line: itself only when private data may be logged."""
    if shown or not number:
        return number or ""
    return "<redacted>"


def spoken(text: str, shown: bool) -> str:
    """What someone said, for a log line: quoted when private data may be logged, else only how long it was."""
    return repr(text) if shown else f"<{len(text)} chars>"


def redacted(cfg: Config) -> Config:
    """`cfg` with each secret replaced by REDACTED. An empty one stays empty: whether it is set still shows."""
    sections: dict[str, Any] = {}
    for field in msgspec.structs.fields(cfg):
        section = getattr(cfg, field.name)
        hidden = {key: _hide(key, value) for key, value in msgspec.structs.asdict(section).items()}
        sections[field.name] = msgspec.structs.replace(section, **hidden)
    return msgspec.structs.replace(cfg, **sections)


def _hide(key: str, value: Any) -> Any:
    if not isinstance(value, str) or not value:
        return value
    if _SECRET_KEY.search(key):
        return REDACTED
    if "@" in value and "://" in value:  # https://user:password@host/
        parts = urlsplit(value)
        if parts.password:
            host = parts.netloc.rpartition("@")[2]
            return urlunsplit(parts._replace(netloc=f"{parts.username}:{REDACTED}@{host}"))
    return value
