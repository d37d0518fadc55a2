"""Small labelled data sets of three kinds, made deterministically and offline, to try the main job (and
every other command) on data other than the embedded two-class reviews:

- `multiclass`: six topics with string labels (sports, finance, science, health, travel, music), each text
  130 to 180 words (145 to 200 tokens) of shared filler words with a few topic words mixed in, some of them
  another topic's; the mix varies per text and 5% of the labels are wrong, so a model learns it well above
  chance but not perfectly.
- `pairs`: natural-language inference on sentence pairs (`text`, `text_pair`) labelled `entailment`,
  `neutral` or `contradiction`: the second sentence restates a detail of the first, changes it, or adds
  one the first does not mention.
- `imbalanced`: two classes, exactly 90% `routine` and 10% `urgent` support messages per split (the share is
  a parameter); most urgent ones carry urgency words, and so do a few routine ones.

`make_task_data(kind, folder)` writes `train`, `validation` and `test` files (`<split>.csv` or `.jsonl`)
into a folder, which `load_dataset(folder, split)` and `--data FOLDER` read; the same kind, sizes and seed
always give the same bytes. `deepcuts make-data KIND FOLDER` does the same from the command line.
"""
from __future__ import annotations

import csv
import io
import json
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from ..errors import DeepCutsError, suggest
from ..outputs import write_folder

SPLITS = ("train", "validation", "test")
SIZES = {"train": 2000, "validation": 300, "test": 300}
FORMATS = ("csv", "jsonl")
LABEL_NOISE = {"multiclass": 0.05, "pairs": 0.05, "imbalanced": 0.0}  # share of rows given a wrong label
MINORITY = 0.1  # the `imbalanced` kind's share of `urgent` rows

# --- word lists (each word one token of the BERT uncased vocabulary) --------------------------------------

TOPICS = {
    "sports": "game team coach player season match score goal league stadium referee tournament championship "
              "ball athletes fans victory defeat training olympic medal race finish",
    "finance": "market bank stock investor price profit loss bond shares trading economy interest loan budget "
               "revenue debt fund currency tax earnings credit inflation",
    "science": "research experiment laboratory theory data physics chemistry biology scientist study molecule "
               "cell energy particle evidence hypothesis discovery telescope atom genetic",
    "health": "doctor patient hospital disease treatment medicine nurse clinic symptoms therapy vaccine diet "
              "surgery illness infection recovery pain blood heart fitness",
    "travel": "flight hotel airport passport tourist journey trip beach island luggage destination ticket "
              "vacation train cruise guide map border resort adventure",
    "music": "song album band concert guitar singer drum melody rhythm piano lyrics orchestra chorus tour record "
             "studio stage jazz violin",
}
FILLER = ("the a of and to in that it was for on with as at by from this had but not they have one all were when "
          "there about which would their what some more could into over after then also other only many these "
          "most those such through where before while every made said people time year day way thing part place "
          "case week work life world hand house number group area country point night story fact").split()

SUBJECTS = "man woman child teacher farmer doctor student driver artist soldier".split()
COLORS = "red blue green yellow black white brown gray".split()
ACTIONS = "sleeping running reading eating singing walking cooking painting swimming dancing".split()
PLACES = "park kitchen garden office station beach forest library market church".split()
MOODS = "happy tired angry hungry nervous".split()
SCENES = ("It is a {weather} {time}.", "The {place2} nearby is {busy}.", "Nobody else is around.")
WEATHER, TIMES, BUSY = "sunny cold quiet warm".split(), "morning afternoon evening".split(), "busy quiet".split()
NLI_LABELS = ("entailment", "neutral", "contradiction")

ROUTINE = ("password bill account update question schedule request change address order delivery receipt thanks "
           "please information help form email profile settings printer laptop meeting report file access").split()
URGENT = ("failure down emergency immediately critical broken failing crashed urgent lost security breach "
          "stopped").split()
TICKET_FILLER = "hello team the my our is was since today we i a to of and can you for it with on this".split()


# --- one row of each kind -----------------------------------------------------------------------------------


def _multiclass_row(rng: random.Random, label: str) -> dict:
    """130-180 words in sentences of 6-14: filler, the topic's words at a per-text rate of 2-7%, and 4% words
    of other topics."""
    own, others = TOPICS[label].split(), [t for t in TOPICS if t != label]
    rate = rng.uniform(0.02, 0.07)
    words = []
    for _ in range(rng.randint(130, 180)):
        r = rng.random()
        if r < rate:
            words.append(rng.choice(own))
        elif r < rate + 0.04:
            words.append(rng.choice(TOPICS[rng.choice(others)].split()))
        else:
            words.append(rng.choice(FILLER))
    return {"text": _sentences(rng, words), "label": label}


def _sentences(rng: random.Random, words: list[str]) -> str:
    """Words cut into capitalised sentences of 6-14 words."""
    out, i = [], 0
    while i < len(words):
        n = rng.randint(6, 14)
        n = len(words) - i if len(words) - i - n < 3 else n  # no sentence of one or two words at the end
        chunk = words[i:i + n]
        out.append(" ".join([chunk[0].capitalize(), *chunk[1:]]) + ".")
        i += n
    return " ".join(out)


def _pairs_row(rng: random.Random, label: str) -> dict:
    """A scene (who, wearing what colour, doing what, where) and a sentence that restates one detail
    (entailment), changes it (contradiction) or adds one the scene does not give (neutral)."""
    who, color, action, place = rng.choice(SUBJECTS), rng.choice(COLORS), rng.choice(ACTIONS), rng.choice(PLACES)
    scene = [f"The {who} in the {color} coat is {action} in the {place}."]
    for extra in rng.sample(SCENES, rng.randint(0, 2)):
        scene.append(extra.format(weather=rng.choice(WEATHER), time=rng.choice(TIMES), busy=rng.choice(BUSY),
                                  place2=rng.choice([p for p in PLACES if p != place])))
    if label == "neutral":
        second = rng.choice([f"The {who} is {rng.choice(MOODS)}.", f"The {who} is waiting for a friend.",
                             f"The {who} has {rng.randint(2, 5)} children.", f"The {who} is {rng.randint(20, 70)} "
                             "years old."])
    else:
        def value(options: list[str], true: str) -> str:
            return true if label == "entailment" else rng.choice([o for o in options if o != true])
        second = rng.choice([f"The {who} wears a {value(COLORS, color)} coat.", f"A {who} is {value(ACTIONS, action)}.",
                             f"Someone is in the {value(PLACES, place)}."])
    return {"text": " ".join(scene), "text_pair": second, "label": label}


def _imbalanced_row(rng: random.Random, label: str) -> dict:
    """A support message of 15-50 words; 90% of urgent ones carry 1-3 urgency words, 10% of routine ones one
    (noise in the texts, not the labels, so the classes keep their exact shares)."""
    words = [rng.choice(TICKET_FILLER if rng.random() < 0.6 else ROUTINE) for _ in range(rng.randint(15, 50))]
    if label == "urgent":
        cues = rng.randint(1, 3) if rng.random() < 0.9 else 0
    else:
        cues = int(rng.random() < 0.1)
    for _ in range(cues):
        words.insert(rng.randrange(len(words) + 1), rng.choice(URGENT))
    return {"text": _sentences(rng, words), "label": label}


# --- the kinds ---------------------------------------------------------------------------------------------


def _balanced(classes: tuple[str, ...]) -> Callable[[random.Random, int], list[str]]:
    """True labels of n rows: the classes in turn (as even as n allows), shuffled."""
    def labels(rng: random.Random, n: int) -> list[str]:
        out = [classes[i % len(classes)] for i in range(n)]
        rng.shuffle(out)
        return out
    return labels


def _imbalanced_labels(minority: float) -> Callable[[random.Random, int], list[str]]:
    """True labels of n rows: round(n * minority) `urgent`, the rest `routine`, shuffled."""
    def labels(rng: random.Random, n: int) -> list[str]:
        urgent = round(n * minority)
        out = ["urgent"] * urgent + ["routine"] * (n - urgent)
        rng.shuffle(out)
        return out
    return labels


KINDS = {  # kind -> (row maker, class names)
    "multiclass": (_multiclass_row, tuple(TOPICS)),
    "pairs": (_pairs_row, NLI_LABELS),
    "imbalanced": (_imbalanced_row, ("routine", "urgent")),
}


def make_rows(kind: str, n: int, seed: int = 0, split: str = "train", minority: float = MINORITY) -> list[dict]:
    """`n` rows of `kind` (`text`, [`text_pair`,] `label`): the same for the same arguments on every machine;
    each split draws from its own seeded generator, so the splits differ."""
    make, classes = _kind(kind)
    if n < 0:
        raise DeepCutsError(f"a split needs 0 or more rows, got {n}")
    rng = random.Random(f"deepcuts-{kind}-{seed}-{split}")  # a str seed hashes the same in every process
    truths = (_imbalanced_labels(minority) if kind == "imbalanced" else _balanced(classes))(rng, n)
    rows = []
    for truth in truths:
        row = make(rng, truth)
        if rng.random() < LABEL_NOISE[kind]:
            row["label"] = rng.choice([c for c in classes if c != truth])
        rows.append(row)
    return rows


def _kind(kind: str) -> tuple[Callable, tuple[str, ...]]:
    if kind not in KINDS:
        raise DeepCutsError(f"unknown kind of data {kind!r}; choose one of: {', '.join(KINDS)}" + suggest(kind, KINDS))
    return KINDS[kind]


def make_task_data(kind: str, folder: str | Path, *, sizes: dict[str, int] | None = None, seed: int = 0,
                   fmt: str = "csv", minority: float = MINORITY, overwrite: bool = False) -> dict[str, Path]:
    """Write the `train`, `validation` and `test` splits of `kind` into `folder` as `<split>.csv` (or `.jsonl`);
    returns split -> file. `sizes` overrides rows per split (default `SIZES`; a split of 0 rows is not
    written). An existing folder is refused unless it is empty or, with `overwrite`, an earlier make-data folder
    whose files this run writes again (see `outputs.write_folder`)."""
    _kind(kind)
    if fmt not in FORMATS:
        raise DeepCutsError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if kind == "imbalanced" and not 0 < minority < 1:
        raise DeepCutsError(f"the minority share must lie strictly between 0 and 1, got {minority:g}")
    sizes = {**SIZES, **(sizes or {})}
    unknown = set(sizes) - set(SPLITS)
    if unknown:
        raise DeepCutsError(f"unknown split {sorted(unknown)[0]!r}; the splits are: {', '.join(SPLITS)}")
    if sizes["train"] < 1:
        raise DeepCutsError("the train split needs at least 1 row")
    written = {split: Path(folder) / f"{split}.{fmt}" for split in SPLITS if sizes[split] > 0}
    with write_folder(folder, kind="data", overwrite=overwrite, name="the data folder", flag="--overwrite") as tmp:
        for split, path in written.items():
            rows = make_rows(kind, sizes[split], seed, split, minority)
            (tmp / path.name).write_text(_format(rows, fmt), encoding="utf-8", newline="")
    return written


def _format(rows: list[dict], fmt: str) -> str:
    """Rows as CSV (header first, quoted where needed, `\\n` line ends) or as JSON lines."""
    if fmt == "jsonl":
        return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["text", "label"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def describe(files: dict[str, Path]) -> dict[str, dict]:
    """Per written split: its file, row count and rows per label (what `deepcuts make-data` prints)."""
    from .sources import load_dataset

    out = {}
    for split, path in files.items():
        data = load_dataset(str(path))
        out[split] = {"file": str(path), "rows": len(data), "labels": dict(sorted(Counter(data.labels).items())),
                      "pairs": data.text_pairs is not None}
    return out
