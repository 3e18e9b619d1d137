"""Write a tiny "pretrained" transformers model and its tokenizer folder with save_pretrained.

Nothing can be downloaded here, so examples, tests and benchmarks build their Hugging Face sources
locally: a character-level tokenizer fitted on a text file, and a small BERT (sequence
classification) or GPT-2 (causal LM) with fresh weights, optionally pretrained for a few steps.

    python scripts/make_tiny_hf.py --kind bert --out models/tiny-bert
    python scripts/make_tiny_hf.py --kind gpt2 --out models/tiny-gpt2 --corpus configs/data/public_domain.txt
    mlrun train configs/bert_text.yaml      # model.path: models/tiny-bert, data.tokenizer: models/tiny-bert
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def corpus_text(path: Path) -> str:
    """Every text of a JSON Lines file's `text` field, or a plain text file as it is."""
    if path.suffix == ".jsonl":
        return "".join(json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip())
    return path.read_text(encoding="utf-8")


def char_tokenizer(text: str, sentence_pair: bool):
    """A transformers fast tokenizer with one id per character (spaces and newlines included)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(set(text))
    vocab = {token: i for i, token in enumerate(SPECIALS + alphabet)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    if sentence_pair:  # BERT's [CLS] text [SEP]
        core.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def tiny_model(kind: str, vocab_size: int, num_labels: int, context: int):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    if kind == "bert":
        config = AutoConfig.for_model(
            "bert",
            vocab_size=vocab_size,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            max_position_embeddings=context,
            num_labels=num_labels,
        )
        return AutoModelForSequenceClassification.from_config(config)
    config = AutoConfig.for_model(
        "gpt2",
        vocab_size=vocab_size,
        n_embd=64,
        n_layer=2,
        n_head=2,
        n_positions=context,
        bos_token_id=0,
        eos_token_id=0,
    )
    return AutoModelForCausalLM.from_config(config)


def write_tiny_hf(out: Path, kind: str, corpus: Path, num_labels: int = 10, context: int = 256, seed: int = 0) -> str:
    """Build the model and tokenizer and save_pretrained both to `out`; a line saying what was written.

    The caller's torch RNG and transformers' log level are left as they were (tests call this in-process).
    """
    import torch
    from transformers import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            tokenizer = char_tokenizer(corpus_text(corpus), sentence_pair=kind == "bert")
            model = tiny_model(kind, len(tokenizer), num_labels, context)
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    finally:
        logging.set_verbosity(level)
    params = sum(p.numel() for p in model.parameters())
    return f"wrote {kind} ({params:,} parameters, vocabulary {len(tokenizer)}) and its tokenizer to {out}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=["bert", "gpt2"], default="bert")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--corpus", type=Path, default=Path(__file__).parent.parent / "configs/data/digits_ascii.jsonl")
    parser.add_argument("--num-labels", type=int, default=10, help="bert: classes of its (to be replaced) head")
    parser.add_argument("--context", type=int, default=256, help="longest sequence the model takes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(write_tiny_hf(args.out, args.kind, args.corpus, args.num_labels, args.context, args.seed))


if __name__ == "__main__":
    main()
