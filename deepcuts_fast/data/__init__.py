"""Labelled text data: the embedded Rotten Tomatoes split, local CSV/TSV/JSON(L) files, hub datasets.

Every source becomes a `TextDataset` (texts, optional second texts, one label each; `dataset`);
`load_dataset` picks the source (`sources`); `encode_labels` maps class names to a model's class ids
(its named labels, else sorted names over all splits) and checks they fit its head; `make_batches`
turns a dataset into padded token batches for a sequence-classification model (`batching`).
"""
from .batching import make_batches
from .dataset import TextDataset, check_labels, encode_labels, label_mapping, named_labels, sorted_label2id
from .sources import (
    EMBEDDED,
    EMBEDDED_ALIASES,
    EMBEDDED_SPLITS,
    EMBEDDED_TEST_SIZE,
    EMBEDDED_TRAIN_SIZE,
    FILE_SUFFIXES,
    load_dataset,
)

__all__ = ["EMBEDDED", "EMBEDDED_ALIASES", "EMBEDDED_SPLITS", "EMBEDDED_TEST_SIZE", "EMBEDDED_TRAIN_SIZE",
           "FILE_SUFFIXES", "TextDataset", "check_labels", "encode_labels", "label_mapping", "load_dataset",
           "make_batches", "named_labels", "sorted_label2id"]
