"""Shared test helpers (tests/ is on sys.path under pytest; subprocesses get it through
`pythonpath()`; benchmarks add tests/ to sys.path themselves)."""
from __future__ import annotations

import os
from typing import Sequence

TESTS = os.path.dirname(os.path.abspath(__file__))  # plugins (test_x:factory) import from here
ROOT = os.path.dirname(TESTS)


def pythonpath() -> str:
    """PYTHONPATH for a subprocess: tests/ (plugins, fake servers) + the inherited one (textok)."""
    return os.pathsep.join(filter(None, [TESTS, os.environ.get("PYTHONPATH")]))


def make_random_t5(path: str, corpus: Sequence[str], *, d_model: int = 32, num_layers: int = 2, num_heads: int = 4,
                   vocab_size: int = 120, seed: int = 0) -> str:
    """Save a random-init T5 encoder + a Unigram tokenizer trained on `corpus` to `path` (no download).

    For tests and benchmarks only: its embeddings carry no pretrained meaning. Loads back through
    the real path: `TextEncoder(path).load()`.
    """
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()  # SentencePiece-style word boundaries, as T5's tokenizer
    tok.train_from_iterator(list(corpus), trainers.UnigramTrainer(vocab_size=vocab_size, unk_token="<unk>",
                                                                  special_tokens=["<pad>", "</s>", "<unk>"]))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    T5TokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                    extra_ids=0).save_pretrained(path)
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=tok.get_vocab_size(), d_model=d_model, d_kv=d_model // num_heads, d_ff=2 * d_model,
                   num_layers=num_layers, num_heads=num_heads, feed_forward_proj="gated-gelu", dropout_rate=0.0)
    T5EncoderModel(cfg).save_pretrained(path)
    return path
