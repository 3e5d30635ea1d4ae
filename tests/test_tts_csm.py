"""The Sesame CSM backend's code path on the CPU, with a TINY RANDOMLY INITIALISED CsmConfig.

The real CSM-1B weights are 2 GB and meant for a GPU host, and nothing may be downloaded
here, so this is a smoke test of our plumbing, not of speech quality: a model of the
real architecture (backbone, depth decoder, Mimi codec) but a few hundred thousand
random parameters, saved to a directory and loaded back through `make_tts("csm", dir)`
exactly as a real model would be. Its "speech" is noise; what is checked is that audio
streams out in chunks at 24 kHz, and that leaving the generator stops generation.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from engine.tts import make_tts  # noqa: E402
from engine.tts_csm import CsmTts  # noqa: E402

FRAMES_PER_SECOND = 12.5


def tiny_csm_dir(path: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import CsmConfig, CsmForConditionalGeneration, MimiConfig, PreTrainedTokenizerFast

    codec = MimiConfig(hidden_size=64, num_filters=4, num_residual_layers=1, upsampling_ratios=[8, 6, 5, 4],
                       codebook_size=64, codebook_dim=16, num_semantic_quantizers=1, num_quantizers=4,
                       num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2, head_dim=32,
                       intermediate_size=64, vector_quantization_hidden_dimension=16, sliding_window=16,
                       upsample_groups=64)
    cfg = CsmConfig(num_codebooks=4, vocab_size=64, text_vocab_size=300, hidden_size=32, intermediate_size=64,
                    num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                    pad_token_id=299, bos_token_id=1, eos_token_id=2, codebook_eos_token_id=0,
                    codebook_pad_token_id=63, audio_token_id=297, audio_eos_token_id=298,
                    depth_decoder_config={"num_codebooks": 4, "vocab_size": 64, "backbone_hidden_size": 32,
                                          "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                          "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
                                          "max_position_embeddings": 5},
                    codec_config=codec.to_dict())
    torch.manual_seed(0)
    CsmForConditionalGeneration(cfg).save_pretrained(path)
    # A byte-level BPE trained here on a few sentences, wrapped like CSM's Llama tokenizer (bos ... eos).
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["[0]Hello there, how can I help you today?", "Your table is booked for Friday."],
                            trainers.BpeTrainer(vocab_size=290, special_tokens=["<unk>", "<s>", "</s>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    wrapped.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def csm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_csm_dir(tmp_path_factory.mktemp("tiny-csm"))


def test_csm_streams_24khz_audio_in_chunks(csm_dir: Path) -> None:
    tts = make_tts("csm", str(csm_dir))
    assert isinstance(tts, CsmTts) and tts.sample_rate == 24000
    tts.max_frames = 24  # a random model rarely says its end-of-audio frame: cap it at ~2 s
    chunks = list(tts.synthesize("Hello there, how can I help you today?"))
    assert len(chunks) >= 2  # audio came out while generation went on, not in one piece at the end
    assert all(c.dtype == np.int16 for c in chunks)
    total = sum(len(c) for c in chunks)
    frames = total / (tts.sample_rate / FRAMES_PER_SECOND)
    assert 1 <= frames <= 24 and frames == int(frames)  # whole 80 ms Mimi frames


def test_leaving_the_generator_stops_generation(csm_dir: Path) -> None:
    tts = make_tts("csm", str(csm_dir))
    assert isinstance(tts, CsmTts)
    tts.max_frames = 10_000  # would run for minutes if nothing stopped it
    gen = tts.synthesize("Your table is booked for Friday.")
    first = next(gen)
    assert len(first) > 0
    gen.close()  # returns once the generation thread has stopped (it joins it)
    assert not any(t.name == "csm-generate" for t in threading.enumerate())
    # ... and it stopped within a step of the cancel, not at its 10,000-frame limit.
    assert tts.frames_generated <= tts.chunk_frames + 2


def test_a_directory_without_a_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a CSM model directory"):
        make_tts("csm", str(tmp_path))


def test_the_tts_process_speaks_with_csm_into_the_ring_and_cancels(csm_dir: Path) -> None:
    from ipc.ring import RingReader, flags_gen
    from ipc.schema import Cancel, Heartbeat, Sentence
    from tools.solo import SoloChild

    h = SoloChild("tts", {"ENGINE_TTS__BACKEND": "csm", "ENGINE_TTS__VOICE": str(csm_dir)})
    try:
        lease = h.start_call("CA-csm")
        reader = RingReader(h.pool.outbound[lease.slot], lease.epoch)
        h.send(Sentence(call_id="CA-csm", gen=1, index=0, text="Hello there.", last=True), "llm")
        frames = []
        while len(frames) < 10:  # the random model never says "end of audio": it would talk for 20 s
            frame = reader.read()
            if frame is None:
                reader.wait(0.5)
                continue
            frames.append(frame)
        assert {f.sample_rate for f in frames} == {24000} and {flags_gen(f.flags) for f in frames} == {1}
        assert all(len(f.payload) == 2 * 480 for f in frames)  # 20 ms frames
        h.send(Cancel(call_id="CA-csm", gen=1), "transport")
        h.wait_for("supervisor", Heartbeat, 10, lambda m: m.stats.get("cancels", 0) >= 1)
        time.sleep(0.5)
        reader.discard_all()
        written = h.pool.outbound[lease.slot].stats().written
        time.sleep(1.0)
        assert h.pool.outbound[lease.slot].stats().written - written <= 1  # nothing more of reply 1
        h.end_call(lease)
    finally:
        h.close()
