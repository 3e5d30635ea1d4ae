"""μ-law tables and the streaming resampler."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import soxr

from engine.codec import MULAW_TO_PCM16, StreamResampler, mulaw_to_pcm16, pcm16_to_mulaw

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import audioop  # the stdlib's C G.711 implementation, as an independent reference (gone in 3.13)
    except ImportError:  # pragma: no cover
        audioop = None


@pytest.mark.skipif(audioop is None, reason="audioop reference not available on this Python")
def test_tables_match_the_reference_g711_for_every_value() -> None:
    all_codes = bytes(range(256))
    assert mulaw_to_pcm16(all_codes).tobytes() == audioop.ulaw2lin(all_codes, 2)
    every_sample = np.arange(-32768, 32768, dtype=np.int16)
    assert pcm16_to_mulaw(every_sample) == audioop.lin2ulaw(every_sample.tobytes(), 2)


def test_decode_then_encode_is_identity_on_codes() -> None:
    codes = bytes(c for c in range(256) if c != 0x7F)  # 0x7F and 0xFF both decode to 0
    assert pcm16_to_mulaw(mulaw_to_pcm16(codes)) == codes


def test_known_points() -> None:
    assert MULAW_TO_PCM16[0xFF] == 0 and MULAW_TO_PCM16[0x00] == -32124 and MULAW_TO_PCM16[0x80] == 32124
    assert pcm16_to_mulaw(np.array([0, 32767, -32768], np.int16)) == bytes([0xFF, 0x80, 0x00])


def _tone(freq: float, rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (np.sin(2 * np.pi * freq * t) * 12000).astype(np.int16)


@pytest.mark.parametrize(("src", "dst"), [(8000, 16000), (22050, 8000), (24000, 8000), (16000, 16000)])
def test_streaming_in_20ms_chunks_matches_one_shot_resampling(src: int, dst: int) -> None:
    x = _tone(440, src, 2.0)
    r = StreamResampler(src, dst)
    chunks = [r.process(x[i:i + src // 50]) for i in range(0, len(x), src // 50)]
    assert all(len(c) > 0 for c in chunks[2:])  # every chunk yields audio: no 100 ms bursts
    out = np.concatenate(chunks).astype(float)
    if src == dst:
        assert np.array_equal(out, x)
        return
    ref = soxr.resample(x, src, dst, quality="HQ")
    lag = len(ref) - len(out)
    assert 0 <= lag <= dst // 25  # at most two 20 ms frames of latency
    # Quality: what comes out is the same 440 Hz tone (any phase), with no clicks at chunk edges.
    y = out[dst // 10:]
    t = np.arange(len(y)) / dst
    basis = np.stack([np.sin(2 * np.pi * 440 * t), np.cos(2 * np.pi * 440 * t), np.ones_like(t)], axis=1)
    fit, *_ = np.linalg.lstsq(basis, y, rcond=None)
    residual = y - basis @ fit
    snr = 10 * np.log10(np.sum((basis @ fit) ** 2) / np.sum(residual**2))
    assert snr > 60, f"streamed tone is distorted: {snr:.1f} dB"
    assert np.max(np.abs(residual)) < 30  # a click at a chunk edge would stand out here


def test_flush_pushes_out_the_tail() -> None:
    r = StreamResampler(24000, 8000)
    x = _tone(300, 24000, 0.1)
    n = len(r.process(x))
    assert n + len(r.flush()) >= len(x) // 3
