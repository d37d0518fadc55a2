"""Labelled text data: the embedded Rotten Tomatoes split, local CSV/TSV/JSON(L) files, hub datasets.

Every source becomes a `TextDataset` (texts, optional second texts, one label each; `dataset`);
`load_dataset` picks the source (`sources`); `encode_labels` maps class names to a model's class ids
(its named labels, else sorted names over all splits) and checks they fit its head; `make_batches`
turns a dataset into padded token batches (`batching`). Token-classification files (words with tags, `token_files`)
and extractive-QA files (SQuAD rows, `qa_files`) load as their own datasets, whose batches carry that task's labels;
`load_task_data` reads a data file as the kind a model's task needs, refusing a file of another kind (`task_data`);
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
from .qa_files import AnswerDataset
from .synthetic import make_task_data
from .task_data import encode_task_data, file_kind, load_task_data
from .token_files import TaggedDataset, encode_tags

__all__ = ["EMBEDDED", "EMBEDDED_ALIASES", "EMBEDDED_SPLITS", "EMBEDDED_TEST_SIZE", "EMBEDDED_TRAIN_SIZE",
           "FILE_SUFFIXES", "AnswerDataset", "TaggedDataset", "TextDataset", "check_labels", "check_seen",
           "encode_labels", "encode_tags", "encode_task_data", "file_kind", "label_mapping", "load_dataset",
           "load_task_data", "make_batches", "make_task_data", "named_labels", "sorted_label2id", "truncation"]
