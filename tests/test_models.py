"""Built-in model factories: what their settings promise."""

from __future__ import annotations

import pytest
import torch

from mlrun.data.bundle import DataMeta
from mlrun.errors import UsageError
from mlrun.models.transformer import gpt

BYTES = DataMeta(task="lm", input_shape=(16,), vocab_size=256, seq_len=16)


def test_gpt_vocab_size_pads_the_tied_embedding_and_the_logits():
    model = gpt(BYTES, n_layer=1, n_head=2, n_embd=32, vocab_size=320)
    assert model.tok_emb.weight.shape == (320, 32) and model.lm_head.weight is model.tok_emb.weight
    assert model(torch.randint(256, (2, 16))).shape == (2, 16, 320)
    assert gpt(BYTES, n_layer=1, n_head=2, n_embd=32).tok_emb.weight.shape[0] == 256  # default: the data's


def test_gpt_vocab_size_below_the_data_vocabulary_is_refused():
    with pytest.raises(UsageError, match="model.vocab_size: 100 is smaller than the data's vocabulary"):
        gpt(BYTES, n_layer=1, n_head=2, n_embd=32, vocab_size=100)
