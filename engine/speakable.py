"""What of a model's text a voice should say, and how: the filter between the LLM and the TTS.

A chat model writes for a screen. On a phone line its stage directions ("[laughs]",
"*smiles*"), placeholders ("[industry/field]"), markdown, emojis and raw URLs would be
read out, and numbers written for the eye ("$49.95", "3:30 p.m.", "555-123-4567") come
out wrong or as one huge number. `speakable(text)` rewrites one piece of a reply (as
the sentence chunker cut it) into what a person would say. What it returns is what the
caller hears, so it is also what the dialogue keeps as said.
"""

from __future__ import annotations

import re
import unicodedata

STAGE_WORDS = frozenset({
    "laughs", "laughing", "laugh", "chuckles", "chuckling", "sighs", "sigh", "pause", "pauses", "pausing",
    "smiles", "smiling", "giggles", "clears", "coughs", "whispers", "beat", "silence", "music", "inhales", "exhales",
})
CURRENCY = {"$": ("dollar", "dollars", "cent", "cents"), "€": ("euro", "euros", "cent", "cents"),
            "£": ("pound", "pounds", "penny", "pence")}

_LINK = re.compile(r"\[([^\]\n]*)\]\((?:[^)\s]*)\)")  # [text](url): the text
_BRACKETED = re.compile(r"\[[^\]]*\]|\{[^}]*\}|<[^>]*>")  # stage directions, placeholders, tags
_UNCLOSED = re.compile(r"[\[{<][^\]}>]*$")  # "... [interrupted by the": cut off before it closed
_UNOPENED = re.compile(r"^[^\[{<]*?[\]}>]")  # "caller] ...": the rest of one the previous piece opened
_STAR_ACTION = re.compile(r"(?<![*\w])\*([^*\n]{1,40})\*(?![*\w])")
_EMPHASIS = re.compile(r"(\*\*|__)(.+?)\1|`([^`]*)`")
_PARENTHETICAL = re.compile(r"\(([^()]{1,30})\)")
_LINE_MARK = re.compile(r"(?m)^\s*(?:#{1,6}\s+|[-*•]\s+|>\s*)")
_URL = re.compile(r"\b(?:https?://|www\.)([^\s/?#]+)[^\s]*", re.IGNORECASE)
_EMAIL = re.compile(r"\b([\w.+-]+)@([\w-]+(?:\.[\w-]+)+)\b")
_PHONE = re.compile(r"(?<![\w+])(\+?1[\s.-]?)?\(?(\d{3})\)?[\s.-]?(\d{3})[\s.-](\d{4})(?!\d)|(?<![\w+])(\d{10})(?!\d)")
_MONEY = re.compile(r"([$€£])\s?(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d{1,2}))?(?!\d)")
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s?%")
_TIME = re.compile(r"\b([01]?\d|2[0-3]):([0-5]\d)(?:\s?([ap])\.?\s?m\b(?:\.(?![\s\"')]*$))?)?", re.IGNORECASE)
_NUMBER_SIGN = re.compile(r"#\s?(\d)")
_SPACE_BEFORE_MARK = re.compile(r"\s+([,.;:!?])")
_PAUSE_THEN_END = re.compile(r"[,;:]+([.!?])")  # "from—." said as "from."
_REPEATED_MARK = re.compile(r"([,;:])(?:\s*[,;:])+")


def speakable(text: str) -> str:
    """`text` as a voice should say it: empty when nothing in it is speech."""
    text = _LINK.sub(r"\1", text)
    text = _BRACKETED.sub(" ", text)
    text = _UNCLOSED.sub(" ", text)
    text = _UNOPENED.sub(" ", text) if _unopened_close(text) else text
    text = _STAR_ACTION.sub(_star, text)
    text = _EMPHASIS.sub(lambda m: m.group(2) or m.group(3) or "", text)
    text = _PARENTHETICAL.sub(_parenthetical, text)
    text = _LINE_MARK.sub("", text)
    text = _URL.sub(lambda m: _spoken_host(m.group(1)), text)
    text = _EMAIL.sub(lambda m: f"{m.group(1)} at {_spoken_host(m.group(2))}", text)
    text = _PHONE.sub(_phone, text)
    text = _MONEY.sub(_money, text)
    text = _PERCENT.sub(r"\1 percent", text)
    text = _TIME.sub(_time, text)
    text = _NUMBER_SIGN.sub(r"number \1", text)
    text = text.replace("&", " and ").replace("*", " ").replace("#", " ").replace("—", ", ").replace("–", "-")
    text = "".join(c for c in text if not _pictograph(c))
    text = " ".join(text.split())
    text = _REPEATED_MARK.sub(r"\1", _SPACE_BEFORE_MARK.sub(r"\1", text))
    text = _PAUSE_THEN_END.sub(r"\1", text)
    text = text.lstrip(" ,;:").rstrip()
    return text if any(c.isalnum() for c in text) else ""


def _unopened_close(text: str) -> bool:
    """Whether the first bracket in `text` is a closing one (the piece before opened it)."""
    m = re.search(r"[\[\]{}<>]", text)
    return m is not None and m.group() in "]}>"


def _star(m: re.Match[str]) -> str:
    """`*smiles*` is a stage direction; `*really*` (one word, not an action) is emphasis: keep the word."""
    inner = m.group(1).strip()
    words = inner.lower().split()
    if any(w.strip(".,!") in STAGE_WORDS for w in words) or len(words) > 1:
        return " "
    return inner


def _parenthetical(m: re.Match[str]) -> str:
    words = m.group(1).lower().split()
    return " " if words and all(w.strip(".,!") in STAGE_WORDS or w in ("a", "softly", "throat") for w in words) \
        else m.group(0)


def _spoken_host(host: str) -> str:
    host = host.lower().removeprefix("www.")
    return " dot ".join(part for part in host.split(".") if part)


def _digits(text: str) -> str:
    return " ".join(text)


def _phone(m: re.Match[str]) -> str:
    """Digit by digit, in the groups people say them in: "5 5 5, 1 2 3, 4 5 6 7"."""
    if m.group(5):
        groups = [m.group(5)[:3], m.group(5)[3:6], m.group(5)[6:]]
    else:
        groups = [m.group(2), m.group(3), m.group(4)]
        if m.group(1):
            groups.insert(0, re.sub(r"\D", "", m.group(1)))
    return ", ".join(_digits(g) for g in groups)


def _money(m: re.Match[str]) -> str:
    one, many, cent, cents = CURRENCY[m.group(1)]
    whole = int(m.group(2).replace(",", ""))
    fraction = int((m.group(3) or "0").ljust(2, "0"))
    parts = []
    if whole or not fraction:
        parts.append(f"{whole} {one if whole == 1 else many}")
    if fraction:
        parts.append(f"{fraction} {cent if fraction == 1 else cents}")
    return " and ".join(parts)


def _time(m: re.Match[str]) -> str:
    hour, minute, half = int(m.group(1)), m.group(2), m.group(3)
    if minute == "00":
        said = f"{hour}" if half else f"{hour} o'clock"
    elif minute.startswith("0"):
        said = f"{hour} oh {minute[1]}"
    else:
        said = f"{hour} {minute}"
    return f"{said} {half.upper()}M" if half else said


def _pictograph(c: str) -> bool:
    """Emoji and other pictographs, and the joiners and selectors that build them."""
    if c in "\u200d\ufe0f\ufe0e\u20e3":
        return True
    return unicodedata.category(c) == "So" or 0x1F000 <= ord(c) <= 0x1FAFF
