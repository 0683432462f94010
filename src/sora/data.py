"""GLUE and user data: read the original GLUE TSVs (or a CSV/JSONL or ``datasets`` dataset of your own), tokenize
for a classifier.

Every task comes out the same way: a ``DatasetDict`` with a ``"train"`` split and one or more validation splits,
columns ``text_a``, optional ``text_b`` and ``label`` (an int64 class id, or a float32 score for regression).
Class ids index ``label_names``, the label strings as they appear in the files ("0"/"1", "entailment", ...),
in the same order as the Hugging Face ``nyu-mll/glue`` ids.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import datasets
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from . import dataset_input
from .errors import SoraError

_TEXT_KEYS = ("text_a", "text_b")


@dataclass(frozen=True)
class TaskSpec:
    """What a task's files look like and how it is scored.

    ``label_names`` are the label strings in the files, class id = index; None means a regression task.
    ``metric_names`` are what ``sora.metrics.compute_metrics`` reports, the primary (model-selection) one first.
    ``columns`` names the fields of a TSV that has no header row (CoLA train/dev); None: the first row is the header.
    """

    name: str
    text_columns: tuple[str, ...]
    label_column: str
    label_names: tuple[str, ...] | None
    metric_names: tuple[str, ...] = ("accuracy",)
    glue_dir: str | None = None
    hub_name: str | None = None
    hub_text_columns: tuple[str, ...] = ()
    validation_splits: tuple[str, ...] = ("validation",)
    columns: tuple[str, ...] | None = None

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def num_labels(self) -> int:
        return 1 if self.label_names is None else len(self.label_names)

    @property
    def primary_metric(self) -> str:
        return self.metric_names[0]


def _glue(name: str, glue_dir: str, text_columns: tuple[str, ...], label_column: str, **kwargs: Any) -> TaskSpec:
    """A GLUE task: hub config ``name``, hub text columns the same as the TSV's unless given."""
    kwargs.setdefault("hub_text_columns", text_columns)
    return TaskSpec(name, text_columns, label_column, glue_dir=glue_dir, hub_name=name, **kwargs)


_BINARY = ("0", "1")
_ENTAILMENT = ("entailment", "not_entailment")
_PAIR = ("sentence1", "sentence2")

TASKS: dict[str, TaskSpec] = {
    "cola": _glue(
        "cola",
        "CoLA",
        ("sentence",),
        "label",
        label_names=_BINARY,
        metric_names=("matthews_correlation",),
        columns=("source", "label", "original_label", "sentence"),
    ),
    "sst2": _glue("sst2", "SST-2", ("sentence",), "label", label_names=_BINARY),
    "mrpc": _glue(
        "mrpc",
        "MRPC",
        ("#1 String", "#2 String"),
        "Quality",
        label_names=_BINARY,
        metric_names=("accuracy", "f1"),
        hub_text_columns=_PAIR,
    ),
    "qqp": _glue(
        "qqp", "QQP", ("question1", "question2"), "is_duplicate", label_names=_BINARY, metric_names=("accuracy", "f1")
    ),
    "stsb": _glue("stsb", "STS-B", _PAIR, "score", label_names=None, metric_names=("pearson", "spearmanr")),
    "mnli": _glue(
        "mnli",
        "MNLI",
        _PAIR,
        "gold_label",
        label_names=("entailment", "neutral", "contradiction"),
        hub_text_columns=("premise", "hypothesis"),
        validation_splits=("validation_matched", "validation_mismatched"),
    ),
    "qnli": _glue("qnli", "QNLI", ("question", "sentence"), "label", label_names=_ENTAILMENT),
    "rte": _glue("rte", "RTE", _PAIR, "label", label_names=_ENTAILMENT),
    "wnli": _glue("wnli", "WNLI", _PAIR, "label", label_names=_BINARY),
}


@dataclass
class TaskData:
    """A loaded task: its spec and its splits (``"train"`` plus ``spec.validation_splits``)."""

    spec: TaskSpec
    splits: DatasetDict

    @property
    def task(self) -> str:
        return self.spec.name

    @property
    def label_names(self) -> list[str] | None:
        return None if self.spec.label_names is None else list(self.spec.label_names)

    @property
    def is_regression(self) -> bool:
        return self.spec.is_regression

    @property
    def num_labels(self) -> int:
        return self.spec.num_labels

    @property
    def primary_metric(self) -> str:
        return self.spec.primary_metric

    @property
    def validation_splits(self) -> tuple[str, ...]:
        return self.spec.validation_splits


def load_task(
    task: str,
    data_dir: str | Path | None = None,
    *,
    train_file: str | Path | None = None,
    validation_file: str | Path | None = None,
    text_columns: list[str] | tuple[str, ...] | None = None,
    label_column: str = "label",
    dataset: str | None = None,
    dataset_config: str | None = None,
    train_split: str = "train",
    validation_split: str = "validation",
) -> TaskData:
    """Load a GLUE task (``TASKS``) or ``"custom"`` data as a ``TaskData``.

    GLUE data is read from ``<data_dir>/<glue_dir>/{train,dev}.tsv`` (MNLI: ``dev_matched.tsv`` and
    ``dev_mismatched.tsv``), where ``data_dir`` is the argument, else ``$GLUE_DIR``, else the data comes from the
    Hugging Face hub (``nyu-mll/glue``).

    ``"custom"`` reads ``train_file`` and ``validation_file`` (.csv, .tsv, .jsonl or .json as JSON Lines) with the
    1 or 2 ``text_columns`` and ``label_column``, or instead the splits ``train_split`` and ``validation_split`` of
    ``dataset`` (:mod:`sora.dataset_input`; ``dataset_config``: a hub dataset's configuration), a ``ClassLabel``
    column read as its names. If every label (train and validation) is a number and one is not
    an integer, the task is regression; otherwise the classes are the sorted distinct train label strings.
    """
    if task == "custom":
        if data_dir is not None:
            raise SoraError("task 'custom' reads train_file and validation_file; data_dir is for GLUE tasks")
        splits = None if dataset is None else (train_split, validation_split)
        return _load_custom(train_file, validation_file, text_columns, label_column, dataset, dataset_config, splits)
    if task not in TASKS:
        raise SoraError(f"unknown task {task!r}; known tasks: {', '.join([*TASKS, 'custom'])}")
    if dataset is not None:
        raise SoraError(f"--dataset is for tasks custom and causal-lm; GLUE task {task!r} reads --data-dir or the hub")
    if train_file is not None or validation_file is not None or text_columns is not None:
        raise SoraError(f"train_file, validation_file and text_columns are for task 'custom', not {task!r}")
    spec = TASKS[task]
    data_dir = data_dir or os.environ.get("GLUE_DIR")
    if not data_dir:
        return TaskData(spec, _load_hub(spec))
    folder = Path(data_dir) / spec.glue_dir
    files = {split: folder / _glue_file(split) for split in ("train", *spec.validation_splits)}
    for path in files.values():
        if not path.is_file():
            raise SoraError(f"{path}: no such file (GLUE data for {task!r} is read from {folder})")
    splits = {}
    for split, path in files.items():
        texts, labels = _read_file(path, spec.text_columns, spec.label_column, spec.columns)
        splits[split] = _dataset(texts, _encode_labels(path, labels, spec.label_names), spec.is_regression)
    return TaskData(spec, DatasetDict(splits))


def load_validation(
    spec: TaskSpec,
    validation_file: str | Path | None = None,
    *,
    dataset: str | None = None,
    dataset_config: str | None = None,
    validation_split: str = "validation",
) -> TaskData:
    """A dev file, or the split ``validation_split`` of ``dataset``, scored with a known task's label set: ``sora
    eval`` of a custom-task adapter.

    The data have the spec's text and label columns; a label outside ``spec.label_names`` is a SoraError.
    """
    if dataset is not None:
        where: str | Path = dataset_input.where(dataset, validation_split)
        texts, labels = _read_dataset(dataset, dataset_config, validation_split, spec.text_columns, spec.label_column)
    elif validation_file is not None:
        where = Path(validation_file)
        texts, labels = _read_file(where, spec.text_columns, spec.label_column)
    else:
        raise SoraError("a custom task's dev data: give validation_file or dataset")
    scored = _dataset(texts, _encode_labels(where, labels, spec.label_names), spec.is_regression)
    return TaskData(replace(spec, validation_splits=("validation",)), DatasetDict({"validation": scored}))


def tokenize(data: TaskData, tokenizer: Any, max_seq_length: int) -> DatasetDict:
    """Tokenize every split, truncated to ``max_seq_length`` and unpadded (pad per batch with a collator).

    Columns: ``input_ids``, ``attention_mask`` (``token_type_ids`` if the tokenizer makes them) and ``labels``.
    Nothing is written to a cache file.
    """
    if max_seq_length < 1:
        raise SoraError(f"max_seq_length must be positive, got {max_seq_length}")
    columns = next(iter(data.splits.values())).column_names
    text_keys = [key for key in _TEXT_KEYS if key in columns]

    def encode(batch: dict[str, list]) -> dict[str, list]:
        return tokenizer(*(batch[key] for key in text_keys), truncation=True, max_length=max_seq_length)

    encoded = data.splits.map(encode, batched=True, remove_columns=text_keys, keep_in_memory=True)
    return encoded.rename_column("label", "labels")


def subsample(ds: Dataset, n: int | None, seed: int) -> Dataset:
    """The first ``n`` rows after a shuffle with ``seed`` (deterministic); ``ds`` itself if n is None or >= len."""
    if n is not None and n < 1:
        raise SoraError(f"sample size must be positive, got {n}")
    if n is None or n >= len(ds):
        return ds
    return ds.shuffle(seed=seed, keep_in_memory=True).select(range(n), keep_in_memory=True)


def _glue_file(split: str) -> str:
    """GLUE file of a split: validation -> dev.tsv, validation_matched -> dev_matched.tsv, train -> train.tsv."""
    return "dev" + split.removeprefix("validation") + ".tsv" if split.startswith("validation") else f"{split}.tsv"


def _load_hub(spec: TaskSpec) -> DatasetDict:
    """The task from the Hugging Face hub, mapped to our columns (label ids there are the same as ours)."""
    hub = datasets.load_dataset("nyu-mll/glue", spec.hub_name)
    features = _features(len(spec.hub_text_columns), spec.is_regression)
    splits = {}
    for split in ("train", *spec.validation_splits):
        ds = hub[split].select_columns([*spec.hub_text_columns, "label"])
        ds = ds.rename_columns(dict(zip(spec.hub_text_columns, _TEXT_KEYS, strict=False)))
        splits[split] = ds.cast(features, keep_in_memory=True)
    return DatasetDict(splits)


def _load_custom(
    train_file: str | Path | None,
    validation_file: str | Path | None,
    text_columns: list[str] | tuple[str, ...] | None,
    label_column: str,
    dataset: str | None = None,
    dataset_config: str | None = None,
    dataset_splits: tuple[str, str] | None = None,
) -> TaskData:
    if dataset is None and (train_file is None or validation_file is None):
        raise SoraError("task 'custom' needs both train_file and validation_file, or a dataset")
    if isinstance(text_columns, str):
        text_columns = [text_columns]
    if not text_columns or len(text_columns) > 2:
        raise SoraError(f"task 'custom' needs 1 or 2 text_columns, got {list(text_columns or [])}")
    columns = tuple(text_columns)
    origin: dict[str, str | Path]  # what errors name: a file, or a dataset's split
    if dataset is not None:
        named = dict(zip(("train", "validation"), dataset_splits or ("train", "validation"), strict=True))
        origin = {split: dataset_input.where(dataset, name) for split, name in named.items()}
        read = {
            split: _read_dataset(dataset, dataset_config, name, columns, label_column) for split, name in named.items()
        }
    else:
        origin = {"train": Path(train_file), "validation": Path(validation_file)}
        read = {split: _read_file(path, columns, label_column) for split, path in origin.items()}
    numbers = [_number(label) for _, labels in read.values() for _, label in labels]
    if all(x is not None for x in numbers) and not all(x.is_integer() for x in numbers):
        label_names, metric_names = None, ("pearson", "spearmanr")
    else:
        label_names = tuple(sorted({label for _, label in read["train"][1]}))
        metric_names = ("accuracy", "f1_macro")
    spec = TaskSpec("custom", tuple(text_columns), label_column, label_names, metric_names)
    splits = {
        split: _dataset(texts, _encode_labels(origin[split], labels, label_names), spec.is_regression)
        for split, (texts, labels) in read.items()
    }
    return TaskData(spec, DatasetDict(splits))


def _read_text(path: Path) -> str:
    """The file as text (UTF-8, a leading BOM dropped); a SoraError names the line of the first bad byte."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise SoraError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise SoraError(f"{path}:{line}: not UTF-8 (byte 0x{raw[e.start]:02x})") from None


def records(path: Path, columns: tuple[str, ...] | None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, {column: value}) for each row of a .tsv (GLUE quoting: none), .csv or JSON Lines file."""
    suffix = path.suffix.lower()
    if suffix not in (".tsv", ".csv", ".jsonl", ".json"):
        raise SoraError(f"{path}: unknown file type {suffix!r}; expected .tsv, .csv, .jsonl or .json")
    text = _read_text(path)
    if suffix == ".tsv":
        return _table_records(path, csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE), columns)
    if suffix == ".csv":
        return _table_records(path, csv.reader(io.StringIO(text)), columns)
    return _jsonl_records(path, text)


def _table_records(path: Path, rows: Any, columns: tuple[str, ...] | None) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of a ``csv.reader``; the first non-empty row is the header unless ``columns`` is given."""
    try:
        for row in rows:
            if not row:
                continue
            if columns is None:
                columns = tuple(row)
            elif len(row) != len(columns):
                raise SoraError(f"{path}:{rows.line_num}: expected {len(columns)} columns, got {len(row)}")
            else:
                yield rows.line_num, dict(zip(columns, row, strict=True))
    except csv.Error as e:
        raise SoraError(f"{path}:{rows.line_num}: {e}") from None


def _jsonl_records(path: Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """JSON Lines: one object per line, blank lines skipped."""
    for line_num, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise SoraError(f"{path}:{line_num}: malformed JSON line ({e.msg}); expected one object per line") from None
        if not isinstance(record, dict):
            raise SoraError(f"{path}:{line_num}: expected a JSON object, got {type(record).__name__}")
        yield line_num, record


def _read_file(
    path: Path, text_columns: tuple[str, ...], label_column: str, columns: tuple[str, ...] | None = None
) -> tuple[dict[str, list[str]], list[tuple[int, str]]]:
    """Texts keyed ``text_a``/``text_b`` and (line, raw label string) pairs of one data file."""
    return _texts_and_labels(path, records(path, columns), text_columns, label_column)


def _texts_and_labels(
    where: str | Path, rows: Iterable[tuple[int, dict[str, Any]]], text_columns: tuple[str, ...], label_column: str
) -> tuple[dict[str, list[str]], list[tuple[int, str]]]:
    """Texts keyed ``text_a``/``text_b`` and (position, raw label string) pairs of ``rows`` ((position, record)
    pairs read from ``where``): every cell present, every label non-empty, at least one row."""
    texts: dict[str, list[str]] = {key: [] for key in _TEXT_KEYS[: len(text_columns)]}
    labels = []
    for position, record in rows:
        cells = [_cell(where, position, record, column) for column in (*text_columns, label_column)]
        if not cells[-1].strip():
            raise SoraError(f"{where}:{position}: empty label in column {label_column!r}")
        for key, cell in zip(texts, cells, strict=False):
            texts[key].append(cell)
        labels.append((position, cells[-1]))
    if not labels:
        raise SoraError(f"{where}: no data rows")
    return texts, labels


def _read_dataset(
    name: str, config: str | None, split: str, text_columns: tuple[str, ...], label_column: str
) -> tuple[dict[str, list[str]], list[tuple[int, str]]]:
    """Texts keyed ``text_a``/``text_b`` and (row index, raw label string) pairs of one split of a dataset."""
    dataset = dataset_input.load_split(name, config, split)
    where = dataset_input.where(name, split)
    wanted = (*text_columns, label_column)
    if not set(wanted) <= set(dataset.column_names):
        raise SoraError(
            f"{where}: columns found: {', '.join(dataset.column_names) or 'none'}; expected: text "
            f"{'columns' if len(text_columns) > 1 else 'column'} {', '.join(text_columns)} and label column "
            f"{label_column} (--text-columns, --label-column)"
        )
    feature = dataset.features[label_column]
    dataset = dataset.select_columns(list(dict.fromkeys(wanted)))

    def rows() -> Iterator[tuple[int, dict[str, Any]]]:
        for i, record in enumerate(dataset):
            if isinstance(feature, ClassLabel) and isinstance(record[label_column], int):
                if 0 <= record[label_column] < feature.num_classes:
                    record[label_column] = feature.int2str(record[label_column])  # the class's name
            empty = [column for column in wanted if record[column] is None]
            if empty:
                raise SoraError(f"{where}:{i}: column {empty[0]!r} is empty (null)")
            yield i, record

    return _texts_and_labels(where, rows(), text_columns, label_column)


def _cell(path: str | Path, line_num: int, record: dict[str, Any], column: str) -> str:
    """A field as a string; JSON numbers and booleans are written as in JSON."""
    if column not in record:
        raise SoraError(f"{path}:{line_num}: no column {column!r} (columns: {', '.join(map(str, record))})")
    value = record[column]
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return json.dumps(value)
    raise SoraError(f"{path}:{line_num}: column {column!r} holds {type(value).__name__}, expected text or number")


def _number(label: str) -> float | None:
    """The label as a finite float, else None."""
    try:
        x = float(label)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def _encode_labels(path: str | Path, labels: list[tuple[int, str]], label_names: tuple[str, ...] | None) -> list:
    """Class ids (index in ``label_names``), or floats when ``label_names`` is None."""
    ids = {name: i for i, name in enumerate(label_names or ())}
    encoded = []
    for line_num, label in labels:
        value = _number(label) if label_names is None else ids.get(label)
        if value is None:
            expected = "a number" if label_names is None else f"one of {', '.join(label_names)}"
            raise SoraError(f"{path}:{line_num}: label {label!r} is not {expected}")
        encoded.append(value)
    return encoded


def _features(n_texts: int, is_regression: bool) -> Features:
    return Features(
        {
            **{key: Value("string") for key in _TEXT_KEYS[:n_texts]},
            "label": Value("float32" if is_regression else "int64"),
        }
    )


def _dataset(texts: dict[str, list[str]], labels: list, is_regression: bool) -> Dataset:
    return Dataset.from_dict({**texts, "label": labels}, features=_features(len(texts), is_regression))
