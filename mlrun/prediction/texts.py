"""Texts for `mlrun predict`: JSON Lines records tokenized and padded as the run's jsonl_text data was.

The label field is optional; when every record has it the file is scored. Records are named by
their line number.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlrun.data.tokenize import ByteTokenizer, encode_padded, make_tokenizer
from mlrun.errors import UsageError
from mlrun.prediction.prepared import Inputs
from mlrun.prediction.tables import labels_to_targets, note_unscored


class _Alphabet:
    """The char tokenizer rebuilt from the alphabet the run recorded (ids as data/tokenize.py)."""

    def __init__(self, alphabet: str):
        self.ids = {c: i + 2 for i, c in enumerate(alphabet)}

    def encode(self, text: str) -> list[int]:
        return [self.ids.get(c, 1) for c in text]


def tokenizer_of(described: dict):
    if described["kind"] == "byte":
        return ByteTokenizer(offset=described["offset"])
    if described["kind"] == "char":
        return _Alphabet(described["alphabet"])
    # a tokenizer.json file or a transformers tokenizer folder, by the path the run recorded
    return make_tokenizer(described["path"], [], "the run's data.tokenizer", pad=True)


def read_texts(path: Path, predictor) -> Inputs:
    import torch

    from mlrun.data.batch import TARGET_KEY
    from mlrun.data.bundle import TensorDictDataset
    from mlrun.data.text import json_lines

    if path.is_dir():
        raise UsageError(f"INPUT: '{path}' is a folder; this run reads a JSON Lines file of {{\"text\": ...}} records")
    settings = predictor.config.data.settings
    text_field, label_field = settings.get("text_field", "text"), settings.get("label_field", "label")
    texts, labels, lines = [], [], []
    for number, record in json_lines(path):
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            raise UsageError(f"{path}:{number}: no string field '{text_field}' (the run's data.text_field)")
        texts.append(record[text_field])
        labels.append(record.get(label_field))
        lines.append(number)
    if not texts:
        raise UsageError(f"INPUT: '{path}' has no records")
    preprocessing = predictor.preprocessing
    ids, mask = encode_padded(tokenizer_of(preprocessing["tokenizer"]), texts, preprocessing["max_length"])
    missing = np.array([label is None for label in labels])
    labelled = not missing.any()
    if missing.any() and not missing.all():
        note_unscored(path, f"field '{label_field}'", missing)
    targets = (
        labels_to_targets(np.array(labels), predictor, path, f"field '{label_field}'")
        if labelled
        else torch.zeros(len(texts), dtype=torch.long)
    )
    # Named tensors, as the run's jsonl_text data gave them to the model (data/text.py).
    dataset = TensorDictDataset(
        {"input_ids": torch.as_tensor(ids), "attention_mask": torch.as_tensor(mask), TARGET_KEY: targets}
    )
    return Inputs(dataset, [{"line": n} for n in lines], labelled)
