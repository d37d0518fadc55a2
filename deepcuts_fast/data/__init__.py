"""Labelled text data: the embedded Rotten Tomatoes split, local CSV/TSV/JSON(L) files, hub datasets.

Every source becomes a `TextDataset` (texts, optional second texts, one label each; `dataset`);
`load_dataset` picks the source (`sources`); `encode_labels` maps class names to a model's class ids
(its named labels, else sorted names over all splits) and checks they fit its head; `make_batches`
turns a dataset into padded token batches for a sequence-classification model (`batching`);
`make_task_data` writes small synthetic data sets of other kinds (multi-class, sentence pairs, imbalanced)
into a folder of split files (`synthetic`).
"""
from .batching import make_batches, truncation
from .dataset import (TextDataset, check_labels, check_seen, encode_labels, label_mapping, named_labels,
                      sorted_label2id)
from .sources import (
    EMBEDDED,
    EMBEDDED_ALIASES,
    EMBEDDED_SPLITS,
    EMBEDDED_TEST_SIZE,
    EMBEDDED_TRAIN_SIZE,
    FILE_SUFFIXES,
    load_dataset,
)
from .synthetic import make_task_data

__all__ = ["EMBEDDED", "EMBEDDED_ALIASES", "EMBEDDED_SPLITS", "EMBEDDED_TEST_SIZE", "EMBEDDED_TRAIN_SIZE",
           "FILE_SUFFIXES", "TextDataset", "check_labels", "check_seen", "encode_labels", "label_mapping",
           "load_dataset", "make_batches", "make_task_data", "named_labels", "sorted_label2id", "truncation"]
