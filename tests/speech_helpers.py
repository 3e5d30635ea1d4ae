"""Caller audio for speech tests: espeak-ng speech, silence and line noise, through the phone path."""

from __future__ import annotations

import re

import numpy as np

from engine.codec import StreamResampler, mulaw_to_pcm16, pcm16_to_mulaw
from tools.caller import speech_from_text


def phone_path(pcm8k: np.ndarray, rate: int = 16000) -> np.ndarray:
    """What the speech process gets from a call: μ-law at 8 kHz, decoded, resampled in 20 ms chunks."""
    decoded = mulaw_to_pcm16(pcm16_to_mulaw(pcm8k))
    resampler = StreamResampler(8000, rate)
    return np.concatenate([resampler.process(decoded[i:i + 160]) for i in range(0, len(decoded), 160)])


def snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    """How far `other` is from `reference`, in dB of signal over difference (inf when identical)."""
    noise = float(np.sum((reference - other) ** 2))
    return float("inf") if noise == 0 else float(10 * np.log10(np.sum(reference ** 2) / noise))


def spoken(text: str) -> np.ndarray:
    return speech_from_text(text, rate=8000)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(8000 * seconds), np.int16)


def line_noise(seconds: float, seed: int = 7) -> np.ndarray:
    """Hiss at about -40 dBFS plus 60 Hz hum and its harmonics: an idle phone line, no voice."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(8000 * seconds)) / 8000
    hum = sum(np.sin(2 * np.pi * 60 * k * t) * 300 / k for k in (1, 2, 3))
    return (rng.normal(0, 330, len(t)) + hum).astype(np.int16)


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))
