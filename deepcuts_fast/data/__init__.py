"""Labelled text data: the embedded Rotten Tomatoes split, local CSV/TSV/JSON(L) files, hub datasets.

Every source becomes a `TextDataset` (texts, optional second texts, one label each; `dataset`);
`load_dataset` picks the source (`sources`); `make_batches` turns a dataset into padded token
batches for a sequence-classification model (`batching`).
"""
from .batching import make_batches
from .dataset import TextDataset, check_labels
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
           "FILE_SUFFIXES", "TextDataset", "check_labels", "load_dataset", "make_batches"]
