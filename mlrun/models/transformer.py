"""Transformer blocks (pre-norm, PyTorch SDPA attention) and the models built from them.

`gpt` is a decoder-only language model with causal attention and tied embeddings (GPT-2 style).
`transformer_classifier` is a bidirectional encoder with mean pooling, over tokens or, for
tabular inputs, one token per feature (FT-Transformer style). Given an `attention_mask` (text
sources yield one), padded tokens are neither attended to nor pooled.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field, PositiveInt
from torch import nn
from torch.nn import functional as F

from mlrun.data.bundle import DataMeta
from mlrun.errors import UsageError
from mlrun.models.heads import output_size
from mlrun.registry import models

Dropout = Annotated[float, Field(ge=0.0, lt=1.0)]


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float, causal: bool, bias: bool):
        super().__init__()
        self.heads, self.dropout, self.causal = heads, dropout, causal
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)

    def forward(self, x: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        """`keys`: (B, 1, 1, T) True where a key may be attended to (padding masked out)."""
        B, T, C = x.shape
        # The head size comes from qkv's width, not the residual's, so pruned heads (prune_structured) fit.
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, -1).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, D)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=keys, dropout_p=self.dropout if self.training else 0.0, is_causal=self.causal
        )
        return self.proj(y.transpose(1, 2).reshape(B, T, -1))


class Block(nn.Module):
    """x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int, dropout: float, causal: bool, bias: bool = True, mlp_ratio: int = 4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, bias=bias)
        self.attn = SelfAttention(dim, heads, dropout, causal, bias)
        self.norm2 = nn.LayerNorm(dim, bias=bias)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim, bias=bias),
            nn.GELU(),
            nn.Linear(mlp_ratio * dim, dim, bias=bias),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), keys)
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    def __init__(
        self, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int, dropout: float, bias: bool
    ):
        super().__init__()
        self.block_size = block_size
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        self.pos_emb = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout, causal=True, bias=bias) for _ in range(n_layer))
        self.norm = nn.LayerNorm(n_embd, bias=bias)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # tied embeddings: fewer parameters, better small LMs
        self.apply(_init_weights)
        for name, param in self.named_parameters():
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                # GPT-2: scale residual projections by 1/sqrt(2 * layers) so the residual stream stays O(1).
                nn.init.normal_(param, mean=0.0, std=0.02 / (2 * n_layer) ** 0.5)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # idx: (B, T) token ids
        T = idx.shape[1]
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.norm(x))  # (B, T, vocab)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)


@models.register("gpt")
def gpt(
    meta: DataMeta,
    /,
    *,
    n_layer: PositiveInt = 4,
    n_head: PositiveInt = 4,
    n_embd: PositiveInt = 128,
    block_size: PositiveInt | None = None,
    dropout: Dropout = 0.0,
    bias: bool = True,
    vocab_size: PositiveInt | None = None,
) -> nn.Module:
    """Decoder-only transformer language model (GPT-2 style, causal SDPA attention, tied embeddings).

    Args:
        n_layer: transformer blocks.
        n_head: attention heads; must divide n_embd.
        n_embd: width of the residual stream.
        block_size: longest context; default the data's sequence length.
        dropout: dropout on embeddings, attention and MLP outputs.
        bias: biases in linear and norm layers.
        vocab_size: rows of the token embedding and logits; default the data's vocabulary. A larger
            table pads it (GPT-2 pads 50257 to 50304, a multiple of 64, for faster matmuls).
    """
    if not meta.vocab_size or not meta.seq_len:
        raise UsageError(f"model 'gpt' needs token data (text_lm, synthetic task: tokens), got a '{meta.task}' dataset")
    if n_embd % n_head:
        raise UsageError(f"model.n_head: {n_head} heads must divide model.n_embd ({n_embd})")
    block = block_size or meta.seq_len
    if block < meta.seq_len:
        raise UsageError(f"model.block_size: {block} is shorter than the data's sequences ({meta.seq_len})")
    vocab = vocab_size or meta.vocab_size
    if vocab < meta.vocab_size:
        raise UsageError(f"model.vocab_size: {vocab} is smaller than the data's vocabulary ({meta.vocab_size})")
    return GPT(vocab, block, n_layer, n_head, n_embd, dropout, bias)


class TransformerClassifier(nn.Module):
    def __init__(self, meta: DataMeta, dim: int, depth: int, heads: int, dropout: float, out_features: int):
        super().__init__()
        tokens = meta.input_shape[0]
        if meta.vocab_size:
            self.embed: nn.Module = nn.Embedding(meta.vocab_size, dim)
        else:  # one token per feature: value * learned vector + learned bias
            self.embed = FeatureTokens(tokens, dim)
        self.pos_emb = nn.Parameter(torch.zeros(1, tokens, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, dropout, causal=False) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, out_features)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`input_ids`: (B, T) token ids or (B, F) features; `attention_mask`: (B, T), 1 for tokens, 0 for padding."""
        x = self.embed(input_ids) + self.pos_emb  # (B, T, C)
        keys = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        for block in self.blocks:
            x = block(x, keys)
        x = self.norm(x)
        if attention_mask is None:
            return self.head(x.mean(dim=1))
        weights = attention_mask.to(x.dtype).unsqueeze(-1)  # (B, T, 1): the mean over real tokens only
        return self.head((x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1))


class FeatureTokens(nn.Module):
    def __init__(self, features: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(features, dim) * 0.02)
        self.bias = nn.Parameter(torch.zeros(features, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, F) -> (B, F, C)
        return x.unsqueeze(-1) * self.weight + self.bias


@models.register("transformer_classifier")
def transformer_classifier(
    meta: DataMeta,
    /,
    *,
    dim: PositiveInt = 64,
    depth: PositiveInt = 2,
    heads: PositiveInt = 4,
    dropout: Dropout = 0.1,
) -> nn.Module:
    """Bidirectional transformer encoder with mean pooling, for token sequences or tabular features.

    Args:
        dim: width of the token embeddings.
        depth: transformer blocks.
        heads: attention heads; must divide dim.
        dropout: dropout in attention and MLP.
    """
    if dim % heads:
        raise UsageError(f"model.heads: {heads} heads must divide model.dim ({dim})")
    if len(meta.input_shape) != 1:
        raise UsageError(
            f"model 'transformer_classifier' needs 1-D samples (tokens or features), got {meta.input_shape}"
        )
    return TransformerClassifier(meta, dim, depth, heads, dropout, output_size(meta, "transformer_classifier"))
