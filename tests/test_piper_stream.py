"""Piper split at the vocoder and decoded in chunks sounds the same as Piper's whole-sentence synthesis."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from engine.codec import mulaw_to_pcm16, pcm16_to_mulaw
from engine.piper_stream import StreamingPiper, chunks, split_voice
from engine.tts import bundled_piper_voice
from tests.speech_helpers import snr_db

SENTENCE = "Your table for four is booked for Friday evening at half past seven, under the name of Smith."


@pytest.fixture(scope="module")
def piper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StreamingPiper]:
    yield StreamingPiper(bundled_piper_voice(), tmp_path_factory.mktemp("cache"))


def test_the_chunks_cover_every_frame_once_the_first_small() -> None:
    assert chunks(300) == [(0, 16), (16, 48), (48, 112), (112, 240), (240, 300)]
    assert chunks(300, ramp=False) == [(0, 16), (16, 144), (144, 272), (272, 300)]
    assert chunks(10) == [(0, 10)]
    assert chunks(0) == []


def test_each_chunk_is_at_most_twice_the_audio_before_it_so_it_decodes_while_that_plays() -> None:
    """A chunk's decode time grows with its length; the caller is hearing the chunks before it meanwhile."""
    for frames in (1, 17, 100, 441, 2000):
        spans = chunks(frames)
        assert spans[0][0] == 0 and spans[-1][1] == frames
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
        for start, end in spans[1:]:
            assert end - start <= min(2 * start, 128)


def test_chunked_decoding_matches_the_whole_graph_without_noise(piper: StreamingPiper) -> None:
    """With the noise scales at 0 the voice is deterministic: the split voice decoded in chunks must give what
    Piper's own whole graph gives for the whole sentence."""
    model = bundled_piper_voice()
    piper._scales = np.array([0.0, piper._scales[1], 0.0], np.float32)  # noise off, same length scale
    latent, _ = next(piper.latents(SENTENCE))
    chunked = np.concatenate([piper.decode(latent, a, b) for a, b in chunks(latent.shape[2])])
    whole = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    ids = np.array([piper._voice.phonemes_to_ids(piper._voice.phonemize(SENTENCE)[0])], np.int64)
    reference = whole.run(None, {"input": ids, "input_lengths": np.array([ids.shape[1]], np.int64),
                                 "scales": piper._scales})[0].reshape(-1)
    assert len(chunked) == len(reference) == latent.shape[2] * piper.hop
    # The seams are far below what the phone line adds: the mu-law codec's own noise on the same audio.
    pcm = np.clip(reference * 32767, -32768, 32767).astype(np.int16)
    codec = mulaw_to_pcm16(pcm16_to_mulaw(pcm)).astype(np.float32) / 32767
    assert snr_db(reference, chunked) > snr_db(reference, codec) + 20 > 55, \
        (snr_db(reference, chunked), snr_db(reference, codec))
    # Without the latent context on both sides the seams are heard: the context is what makes it match.
    bare = np.concatenate([piper._decoder.run(None, {piper._latent_name: latent[:, :, a:b]})[0].reshape(-1)
                           for a, b in chunks(latent.shape[2])])
    assert snr_db(reference, bare) < snr_db(reference, chunked) - 20


def test_the_split_is_made_once_into_the_cache(tmp_path: Path) -> None:
    first = split_voice(bundled_piper_voice(), tmp_path)
    made = [p.stat().st_mtime_ns for p in first]
    assert split_voice(bundled_piper_voice(), tmp_path) == first
    assert [p.stat().st_mtime_ns for p in first] == made


def test_the_first_audio_is_a_short_chunk(piper: StreamingPiper) -> None:
    audio = list(piper.synthesize(SENTENCE))
    assert len(audio) > 2 and len(audio[0]) == 16 * piper.hop
    assert np.abs(np.concatenate(audio)).max() > 3000  # speech, at a level a caller hears


def test_the_planned_length_is_the_length_made(piper: StreamingPiper) -> None:
    """What the TTS tells the transport with a sentence's first frame rests on this count being exact."""
    for text in (SENTENCE, "Yes.", "One moment. Let me check that for you, it will not take long."):
        plan = piper.planned(text)
        assert plan.samples == sum(len(chunk) for chunk in plan.audio)


def test_the_voice_says_where_each_word_is_and_the_audio_agrees(piper: StreamingPiper) -> None:
    """Word times from the duration predictor: one per word of the text, in order, inside the audio; the pause
    after a comma is quiet where the words around it are not."""
    text = "Paris, a city of light and art, is lovely in the spring."
    plan = piper.planned(text)
    audio = np.concatenate(list(plan.audio)).astype(np.float32)
    assert plan.words is not None and len(plan.words) == len(text.split())
    assert all(start < end <= later for (start, end), (later, _) in zip(plan.words, plan.words[1:], strict=False))
    assert plan.words[-1][1] <= plan.samples

    def rms(lo: int, hi: int) -> float:
        return float(np.sqrt(np.mean(audio[lo:hi] ** 2)))

    paris, a = plan.words[0], plan.words[1]
    assert a[0] - paris[1] > 0.1 * piper.sample_rate  # the comma's pause, not counted in either word
    assert rms(paris[1], a[0]) < 0.2 * rms(*paris)
    costs = piper.planned("It costs 49 dollars, in the end.").words  # "forty nine" for "49"; "in the" as one
    assert costs is not None and len(costs) == 7
