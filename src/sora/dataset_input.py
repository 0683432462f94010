"""``--dataset``: the records of a run from the ``datasets`` library instead of CSV/JSONL files.

A source is one of

- a folder written by ``save_to_disk``: a ``DatasetDict`` (its splits by name) or a single ``Dataset`` (one split,
  named as its info records, else ``train``, datasets' name for data without splits);
- a local file set: a folder of parquet, JSON (or JSON Lines) or CSV files, a glob of them, or one such file, read
  with ``datasets.load_dataset(builder, data_files=...)``. A file's split comes from a keyword in its name, else in
  a folder name, by datasets' own rule for data folders (train, training; validation, valid, dev, val; test,
  testing, eval, evaluation; cut off by ``-._``, a space, a digit or the end); with no keyword anywhere every
  file is ``train``;
- anything else is a hub dataset: ``datasets.load_dataset(name, config, split=split)``, online or from the cache.

A split is a name or datasets' split syntax: ``train[:90%]``, ``train[90%:]``, ``train[:100]+validation``.

:func:`rows` yields each row as a record without its null fields (the columns that other record shapes fill in a
mixed file), so a ``Dataset`` of mixed records reads as the JSON Lines file of the same records; :func:`where` names
a row ``SOURCE[split]:i`` (``i`` its index), as ``file:line`` names a row of a file.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset, DatasetDict

from .errors import SoraError, first_line

BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}
# datasets.data_files.SPLIT_KEYWORDS: the words that put a data file into a split
_SPLIT_KEYWORDS = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "dev", "val"),
    "test": ("test", "testing", "eval", "evaluation"),
}
_SEPARATOR = "[-._ 0-9]"


def load_split(name: str, config: str | None, split: str) -> Dataset:
    """The split ``split`` of the dataset ``name`` (a ``save_to_disk`` folder, a local file set or a hub name, see
    the module's text); a missing source or split is a one-line SoraError naming what there is."""
    if not name.strip():
        raise SoraError("--dataset names no dataset")
    path = Path(name).expanduser()
    local = path.exists() or glob.has_magic(name)
    if local and config is not None:
        raise SoraError(f"--dataset-config names a configuration of a hub dataset; {name} is local")
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        return _from_disk(name, path, split)
    if local:
        return _from_files(name, split)
    if _looks_local(name):
        raise SoraError(f"{name}: no such dataset folder or file")
    return _from_hub(name, config, split)


def resolve(name: str) -> str:
    """``name`` as ``sora eval`` finds it from any folder: a local folder, file or glob as an absolute path, a hub
    name as it is."""
    path = Path(name).expanduser()
    if path.exists() or glob.has_magic(name) or _looks_local(name):
        return os.path.abspath(path)
    return name


def where(name: str, split: str) -> str:
    """How error messages name the split ``split`` of ``name``: ``name[split]``."""
    return f"{name}[{split}]"


def rows(dataset: Dataset) -> Iterator[tuple[int, dict[str, Any]]]:
    """(index, record) for each row of ``dataset``, the record without its null fields."""
    for i, row in enumerate(dataset):
        yield i, {key: value for key, value in row.items() if value is not None}


def _looks_local(name: str) -> bool:
    """Whether ``name`` is meant as a path (a hub name is ``name`` or ``owner/name``)."""
    path = Path(name)
    return path.is_absolute() or name.startswith((".", "~")) or path.suffix.lower() in BUILDERS or len(path.parts) > 2


def _from_disk(name: str, path: Path, split: str) -> Dataset:
    try:
        loaded = datasets.load_from_disk(str(path))
    except (OSError, ValueError, KeyError) as e:
        raise SoraError(f"{name}: cannot read the saved dataset: {first_line(e)}") from None
    if isinstance(loaded, DatasetDict):
        splits, what = dict(loaded), f"splits: {', '.join(loaded)}"
    else:
        own = str(loaded.split) if loaded.split else "train"
        splits = {own: loaded}
        what = f"a single Dataset, split {own!r} only: save a DatasetDict, or slice it as {own}[90%:]"
    for wanted in _split_names(name, split):
        if wanted not in splits:
            raise SoraError(f"{name}: no split {wanted!r} ({what})")
    if split in splits:
        return splits[split]
    sizes = {key: len(value) for key, value in splits.items()}
    parts = [
        splits[part.splitname].select(range(part.from_, part.to))
        for part in datasets.ReadInstruction.from_spec(split).to_absolute(sizes)
    ]
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def _split_names(name: str, split: str) -> list[str]:
    """The split names in ``split``, datasets' split syntax: ``train``, ``train[:90%]``, ``train[10:]+validation``."""
    names = [part.split("[", 1)[0].strip() for part in split.split("+")]
    try:
        datasets.ReadInstruction.from_spec(split)
    except (ValueError, AssertionError) as e:
        raise SoraError(f"{name}: bad split {split!r}: {first_line(e)}") from None
    return names


def _from_files(name: str, split: str) -> Dataset:
    files, base = _data_files(name)
    kinds = sorted({f.suffix.lower() for f in files})
    builders = {BUILDERS[kind] for kind in kinds}
    if len(builders) > 1:
        raise SoraError(f"{name}: files of several types ({', '.join(kinds)}); use parquet, JSON or CSV files alone")
    splits = _split_files(files, base)
    wanted = _split_names(name, split)
    for missing in (s for s in wanted if s not in splits):
        found = ", ".join(f"{s} ({len(f)} file{'s' if len(f) > 1 else ''})" for s, f in splits.items())
        raise SoraError(
            f"{name}: no {missing!r} files (by file name: {found}); a file's split is a keyword in its name, "
            "e.g. train.parquet, validation-00000.parquet, dev.jsonl"
        )
    data_files = {s: [str(f) for f in splits[s]] for s in wanted}
    try:
        return datasets.load_dataset(builders.pop(), data_files=data_files, split=split)
    except (datasets.exceptions.DatasetsError, OSError, ValueError, TypeError) as e:
        raise SoraError(f"{name}[{split}]: cannot read the files: {first_line(e.__cause__ or e)}") from None


def _data_files(name: str) -> tuple[list[Path], Path]:
    """The data files of a folder, a glob or one file, sorted, and the folder their split names are relative to."""
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix.lower() not in BUILDERS:
            raise SoraError(f"{name}: unknown file type {path.suffix!r}; expected .parquet, .json, .jsonl or .csv")
        return [path], path.parent
    if path.is_dir():
        base, found = path, [p for p in path.rglob("*") if p.is_file()]
    else:
        fixed = []
        for part in path.parts:  # the folder before the first wildcard
            if glob.has_magic(part):
                break
            fixed.append(part)
        base = Path(*fixed) if fixed else Path()
        found = [Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file()]
    files = sorted(
        p
        for p in found
        if p.suffix.lower() in BUILDERS and not any(part.startswith((".", "_")) for part in p.relative_to(base).parts)
    )
    if not files:
        raise SoraError(f"{name}: no parquet, JSON or CSV files {'match' if glob.has_magic(name) else 'there'}")
    return files, base


def _split_files(files: list[Path], base: Path) -> dict[str, list[Path]]:
    """The files of each split, by datasets' rule: keywords in folder names first, then in file names, else all
    files are ``train``."""
    for in_folders in (True, False):
        splits = {}
        for split, keywords in _SPLIT_KEYWORDS.items():
            chosen = [f for f in files if any(_names_split(f.relative_to(base), k, in_folders) for k in keywords)]
            if chosen:
                splits[split] = chosen
        if splits:
            return splits
    return {"train": files}


def _names_split(relative: Path, keyword: str, in_folders: bool) -> bool:
    if in_folders:
        word = re.compile(f"(.*{_SEPARATOR})?{keyword}({_SEPARATOR}.*)?")
        return any(word.fullmatch(part) for part in relative.parts[:-1])
    return re.fullmatch(f"(.*{_SEPARATOR})?{keyword}{_SEPARATOR}.*", relative.name) is not None


def _from_hub(name: str, config: str | None, split: str) -> Dataset:
    try:
        return datasets.load_dataset(name, config, split=split)
    except Exception as e:  # the hub's failures come in many types (network, unknown name, config or split)
        raise SoraError(
            f"cannot load dataset {name!r} (no such local folder or file; from the hub: {first_line(e)})"
        ) from None
