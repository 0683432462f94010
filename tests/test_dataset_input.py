"""``sora train --dataset``: a ``save_to_disk`` folder and a local parquet file set train and score as the same
records in JSONL files do, a custom classification task trains from a saved dataset, ``sora eval`` finds the run's
dev split by itself, and bad input is one line that writes nothing.

Offline: local datasets only (the hub path of :mod:`sora.dataset_input` needs the network); ``datasets``' cache is a
temp folder. The records and the tiny decoder are those of ``test_causal_lm.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import torch
from conftest import MINILM, llama, word_tokenizer
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from safetensors.torch import load_file
from test_causal_lm import _records, _write_jsonl

from sora import SoraError
from sora.cli import main
from sora.dataset_input import load_split

SETTINGS = ["--max-seq-length", "32", "--batch-size", "8", "--logging-steps", "1", "--r", "4", "--epochs", "2"]


@pytest.fixture(scope="module", autouse=True)
def _datasets_cache(tmp_path_factory):
    """``datasets``' cache in a temp folder, never the user's, and no progress bars on stderr."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf-datasets")))
        datasets.disable_progress_bars()
        yield
        datasets.enable_progress_bars()


@pytest.fixture(scope="module")
def decoder_dir(tmp_path_factory) -> Path:
    """The tiny random Llama of ``test_causal_lm.py`` with its word-level tokenizer, saved as a model folder."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    llama(seed=1, initializer_range=0.2).save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    return folder


def _dataset(records: list[dict]) -> Dataset:
    """The records as one Dataset: a column per field, null where a record has no such field."""
    keys = sorted({key for record in records for key in record})
    return Dataset.from_dict({key: [record.get(key) for record in records] for key in keys})


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, str]:
    """The same mixed records (prompt/completion, chat, text) as JSONL files, a saved DatasetDict and parquet files."""
    folder = tmp_path_factory.mktemp("sources")
    train, dev = _records(24, 0), _records(8, 1)
    _write_jsonl(folder / "train.jsonl", train)
    _write_jsonl(folder / "dev.jsonl", dev)
    DatasetDict({"train": _dataset(train), "validation": _dataset(dev)}).save_to_disk(folder / "saved")
    (folder / "parquet").mkdir()
    _dataset(train).to_parquet(folder / "parquet" / "train-00000-of-00001.parquet")
    _dataset(dev).to_parquet(folder / "parquet" / "dev.parquet")  # "dev": the validation split, by datasets' rule
    return {
        "jsonl": str(folder / "train.jsonl"),
        "dev": str(folder / "dev.jsonl"),
        "saved": str(folder / "saved"),
        "parquet": str(folder / "parquet" / "*.parquet"),
    }


def _causal(decoder_dir: Path, out: Path, *data: str) -> list[str]:
    return ["train", "--task", "causal-lm", "--model", str(decoder_dir), "--output-dir", str(out), *data, *SETTINGS]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, decoder_dir, sources) -> Path:
    """One SoRA run per source, same seed and settings, with greedy generations for two dev prompts."""
    base = tmp_path_factory.mktemp("runs")
    data = {
        "jsonl": ["--train-file", sources["jsonl"], "--validation-file", sources["dev"]],
        "saved": ["--dataset", sources["saved"]],
        "parquet": ["--dataset", sources["parquet"]],
    }
    for name, options in data.items():
        assert main([*_causal(decoder_dir, base / name, *options), "--lr", "1e-2", "--generate-eval", "2"]) == 0
    return base


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


@pytest.mark.parametrize("source", ["saved", "parquet"])
def test_a_dataset_trains_and_scores_as_the_same_records_in_jsonl_files(runs, source):
    files, dataset = _metrics(runs / "jsonl"), _metrics(runs / source)
    assert dataset["eval"]["loss"] == pytest.approx(files["eval"]["loss"], abs=1e-6)
    assert dataset["eval"]["exact_match"] == files["eval"]["exact_match"]
    assert dataset["baseline"] == pytest.approx(files["baseline"], abs=1e-9)
    assert dataset["train_samples"] == files["train_samples"] == 24 and dataset["ranks"] == files["ranks"]
    expected = load_file(runs / "jsonl" / "adapter" / "adapter_model.safetensors")
    tensors = load_file(runs / source / "adapter" / "adapter_model.safetensors")
    assert tensors.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(tensors[name], tensor, rtol=0, atol=1e-6, msg=name)
    generated = [json.loads(line)["generation"] for line in (runs / source / "generations.jsonl").open()]
    assert generated == [json.loads(line)["generation"] for line in (runs / "jsonl" / "generations.jsonl").open()]


@pytest.mark.parametrize("source", ["saved", "parquet"])
def test_sora_eval_finds_the_runs_dataset_and_dev_split(runs, sources, source, tmp_path, monkeypatch, capsys):
    adapter = runs / source / "adapter"
    recorded = json.loads((adapter / "sora_task.json").read_text())["dataset"]
    assert recorded == {"dataset": sources[source], "dataset_config": None, "validation_split": "validation"}
    monkeypatch.chdir(tmp_path)  # the record holds an absolute path: eval from anywhere
    assert main(["eval", "--adapter", str(adapter), "--output", "scores.json"]) == 0
    scores = json.loads(Path("scores.json").read_text())
    assert scores["loss"] == pytest.approx(_metrics(runs / source)["eval"]["loss"], rel=1e-6)
    # another split of the same dataset, by name
    assert main(["eval", "--adapter", str(adapter), "--validation-split", "train", "--output", "train.json"]) == 0
    assert json.loads(Path("train.json").read_text())["loss"] != pytest.approx(scores["loss"])
    # the JSONL run's adapter scored on the saved dataset: the same records, the same loss
    capsys.readouterr()
    assert main(["eval", "--adapter", str(runs / "jsonl" / "adapter"), "--dataset", sources["saved"]]) == 0
    assert json.loads(capsys.readouterr().out)["loss"] == pytest.approx(scores["loss"], rel=1e-6)


def test_file_sets_split_by_datasets_file_name_rule_and_take_split_slices(tmp_path):
    rows = _dataset([{"text": f"copy {letter}"} for letter in "abcdef"])
    (tmp_path / "data" / "train").mkdir(parents=True)
    (tmp_path / "data" / "valid").mkdir()
    rows.to_parquet(tmp_path / "data" / "train" / "part-0.parquet")
    rows.select(range(2)).to_parquet(tmp_path / "data" / "valid" / "part-0.parquet")
    rows.to_json(tmp_path / "all.jsonl")
    folder = str(tmp_path / "data")
    assert load_split(folder, None, "validation")["text"] == ["copy a", "copy b"]  # by its folder's name
    assert len(load_split(folder, None, "train")) == 6
    assert load_split(folder, None, "train[:50%]")["text"] == ["copy a", "copy b", "copy c"]
    assert load_split(str(tmp_path / "data" / "*" / "*.parquet"), None, "validation").num_rows == 2
    single = str(tmp_path / "all.jsonl")  # one file without a split keyword: all of it is train
    assert load_split(single, None, "train[4:]")["text"] == ["copy e", "copy f"]
    with pytest.raises(SoraError, match=r"no 'validation' files \(by file name: train \(1 file\)\)"):
        load_split(single, None, "validation")
    rows.save_to_disk(tmp_path / "one")  # a single saved Dataset: split train, sliceable
    assert load_split(str(tmp_path / "one"), None, "train[-1:]")["text"] == ["copy f"]


def test_custom_classification_trains_from_a_saved_dataset(tmp_path, capsys):
    words = ["a gripping film", "dull and long", "loved every minute", "a waste of time"]
    features = Features({"sentence": Value("string"), "label": ClassLabel(names=["neg", "pos"]), "id": Value("int64")})
    rows = {"sentence": [f"{words[i % 4]} {i}" for i in range(40)], "label": [1 - i % 2 for i in range(40)]}
    saved = tmp_path / "reviews"
    full = Dataset.from_dict({**rows, "id": list(range(40))}, features=features)
    DatasetDict({"train": full.select(range(32)), "validation": full.select(range(32, 40))}).save_to_disk(saved)
    out = tmp_path / "run"
    argv = ["train", "--task", "custom", "--model", str(MINILM), "--dataset", str(saved), "--text-columns", "sentence"]
    argv += ["--output-dir", str(out), "--r", "2", "--max-seq-length", "16", "--batch-size", "8", "--epochs", "1"]
    assert main(argv) == 0
    metrics = _metrics(out)
    assert metrics["train_samples"] == 32 and set(metrics["eval"]) == {"accuracy", "f1_macro"}
    info = json.loads((out / "adapter" / "sora_task.json").read_text())
    assert info["spec"]["label_names"] == ["neg", "pos"]  # the ClassLabel's names, not its ids
    assert info["dataset"]["dataset"] == str(saved)
    capsys.readouterr()
    assert main(["eval", "--adapter", str(out / "adapter")]) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx(metrics["eval"])


# ---------------------------------------------------------------------------------------------------------------
# bad input


def _saved(folder: Path, **splits: list[dict]) -> str:
    """A saved DatasetDict of these splits' records."""
    DatasetDict({name: _dataset(records) for name, records in splits.items()}).save_to_disk(folder)
    return str(folder)


def _saved_one(folder: Path, records: list[dict]) -> str:
    """A saved single Dataset of ``records``."""
    _dataset(records).save_to_disk(folder)
    return str(folder)


BAD = {
    "missing-folder": (lambda t: ["--dataset", str(t / "nowhere")], "nowhere: no such dataset folder or file"),
    "missing-split": (
        lambda t: ["--dataset", _saved(t / "d", train=[{"text": "copy a"}])],
        "d: no split 'validation' (splits: train)",
    ),
    "single-dataset": (
        lambda t: ["--dataset", _saved_one(t / "one", [{"text": "copy a"}])],
        "one: no split 'validation' (a single Dataset, split 'train' only",
    ),
    "no-fitting-columns": (
        lambda t: ["--dataset", _saved(t / "d", train=[{"input": "a", "output": "b"}], validation=[{"input": "a"}])],
        "d[train]: columns found: input, output; expected: prompt and completion, messages, or text",
    ),
    "a-bad-record": (
        lambda t: ["--dataset", _saved(t / "d", train=[{"text": "copy a"}, {"text": " "}], validation=[{"text": "a"}])],
        "d[train]:1: field 'text' is empty",
    ),
    "dataset-and-train-file": (
        lambda t: ["--dataset", str(t), "--train-file", "t.jsonl"],
        "--dataset replaces --train-file and --validation-file: give one or the other",
    ),
    "split-without-dataset": (
        lambda t: ["--train-file", "t.jsonl", "--validation-file", "d.jsonl", "--train-split", "x"],
        "--dataset-config, --train-split and --validation-split choose from a --dataset",
    ),
    "config-of-a-local-dataset": (
        lambda t: ["--dataset", _saved(t / "d", train=[{"text": "a"}]), "--dataset-config", "en"],
        "--dataset-config names a configuration of a hub dataset",
    ),
}


@pytest.mark.parametrize(("build", "needle"), BAD.values(), ids=BAD.keys())
def test_bad_causal_lm_datasets_are_one_line_and_write_nothing(tmp_path, decoder_dir, capsys, build, needle):
    out = tmp_path / "out"
    assert main(_causal(decoder_dir, out, *build(tmp_path))) == 2
    err = capsys.readouterr().err
    assert err.startswith("sora: error: ") and err.count("\n") == 1 and needle in err, err
    assert not out.exists()


@pytest.mark.parametrize(
    ("task", "needle"),
    [
        (["--task", "rte"], "--dataset is for tasks custom and causal-lm; GLUE task 'rte' reads --data-dir or the hub"),
        (
            ["--task", "custom", "--text-columns", "premise,hypothesis"],
            "d[train]: columns found: label, sentence; expected: text columns premise, hypothesis and label column "
            "label",
        ),
    ],
)
def test_bad_classification_datasets_are_one_line_and_write_nothing(tmp_path, capsys, task, needle):
    saved = _saved(tmp_path / "d", train=[{"sentence": "ok", "label": "pos"}], validation=[{"sentence": "ok"}])
    out = tmp_path / "out"
    assert main(["train", *task, "--model", str(MINILM), "--dataset", saved, "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sora: error: ") and err.count("\n") == 1 and needle in err, err
    assert not out.exists()


def test_eval_takes_a_dataset_or_a_validation_file_not_both(runs, sources, capsys):
    argv = ["eval", "--adapter", str(runs / "saved" / "adapter"), "--dataset", sources["saved"]]
    assert main([*argv, "--validation-file", sources["dev"]]) == 2
    assert capsys.readouterr().err == "sora: error: give --dataset or --validation-file, not both\n"
