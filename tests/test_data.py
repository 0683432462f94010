"""sora.data: the real GLUE files, fixtures for the absent ones, custom CSV/JSONL, every bad-input error, tokenize."""

from __future__ import annotations

import csv
import functools
import json
import re
import tempfile
from pathlib import Path

import datasets
import numpy as np
import pytest
from conftest import MINILM, glue_folder
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sora.data import TASKS, TaskData, load_task, subsample, tokenize
from sora.errors import SoraError
from sora.run_config import TrainConfig
from sora.tasks import classification

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "glue"

# Data rows per file, from shared/data/glue/SOURCES.md.
ROWS = {
    "cola": {"train": 8551, "validation": 1043},
    "sst2": {"train": 67349, "validation": 872},
    "mrpc": {"train": 3668, "validation": 408},
    "stsb": {"train": 5749, "validation": 1500},
    "rte": {"train": 2490, "validation": 277},
    "wnli": {"train": 635, "validation": 71},
}

# The header row of each task's real train file (None: no header), and of MNLI's dev files.
HEADERS = {
    "cola": None,
    "sst2": ["sentence", "label"],
    "mrpc": ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
    "qqp": ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
    "stsb": ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
             "score"],
    "mnli": ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
             "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"],
    "qnli": ["index", "question", "sentence", "label"],
    "rte": ["index", "sentence1", "sentence2", "label"],
    "wnli": ["index", "sentence1", "sentence2", "label"],
}  # fmt: skip
MNLI_DEV_HEADER = [*HEADERS["mnli"][:-1], "label2", "label3", "label4", "label5", "gold_label"]
STSB_HEADER = "\t".join(HEADERS["stsb"]) + "\n"


@functools.cache
def _real(task: str, glue_dir: Path) -> TaskData:
    return load_task(task, glue_dir)


@pytest.fixture
def real(glue_dir):
    """Load a real GLUE task once per session."""
    return functools.partial(_real, glue_dir=glue_dir)


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def write_jsonl(path: Path, records: list[dict]) -> Path:
    return write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def write_csv(path: Path, rows: list[list]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def glue_error(tmp_path: Path, glue_dir: Path, task: str, train: str | bytes) -> str:
    """The SoraError message of loading ``task`` whose train.tsv is ``train`` (and dev.tsv a valid copy)."""
    folder = tmp_path / TASKS[task].glue_dir
    write(folder / "train.tsv", train)
    for split in TASKS[task].validation_splits:
        name = "dev" + split.removeprefix("validation") + ".tsv"
        (folder / name).symlink_to((glue_dir if task in ROWS else FIXTURES) / TASKS[task].glue_dir / name)
    with pytest.raises(SoraError) as e:
        load_task(task, tmp_path)
    return str(e.value)


# --- the real GLUE files ------------------------------------------------------------------------------------------


def test_a_missing_glue_folder_skips_the_test_and_says_where_it_looked(tmp_path):
    with pytest.raises(pytest.skip.Exception, match=f"GLUE data not found at {re.escape(str(tmp_path))} ") as info:
        glue_folder(tmp_path)
    assert "set GLUE_DIR" in str(info.value)
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n")
    assert glue_folder(tmp_path) == tmp_path


@pytest.mark.parametrize("task", ROWS)
def test_real_row_counts_and_labels(real, task):
    data = real(task)
    assert {split: len(ds) for split, ds in data.splits.items()} == ROWS[task]
    for ds in data.splits.values():
        labels = np.array(ds["label"])
        if task == "stsb":
            assert ds.features["label"] == Value("float32")
            assert labels.min() == 0.0 and labels.max() == 5.0 and (labels % 1 != 0).any()
        else:
            assert ds.features["label"] == Value("int64")
            assert set(labels.tolist()) == {0, 1}
        assert ds.column_names == (["text_a", "label"] if task in ("cola", "sst2") else ["text_a", "text_b", "label"])
        assert all(ds["text_a"])


def test_real_first_rows(real):
    cola = real("cola").splits
    assert cola["train"][0] == {
        "text_a": "Our friends won't buy this analysis, let alone the next one we propose.",
        "label": 1,
    }
    assert cola["validation"][0] == {"text_a": "The sailors rode the breeze clear of the rocks.", "label": 1}
    assert cola["validation"][-1]["text_a"].endswith(".")  # the last line has no newline
    sst2 = real("sst2").splits
    assert sst2["train"][0] == {"text_a": "hide new secretions from the parental units ", "label": 0}
    mrpc = real("mrpc").splits  # starts with a BOM; stray quotes are text
    assert mrpc["train"][0]["text_a"].startswith('Amrozi accused his brother, whom he called "the witness", of')
    assert mrpc["train"][0]["label"] == 1
    assert mrpc["validation"][0]["text_b"].startswith('"The foodservice pie business does not fit')
    stsb = real("stsb").splits
    assert stsb["train"][0] == {"text_a": "A plane is taking off.", "text_b": "An air plane is taking off.",
                                "label": 5.0}  # fmt: skip
    assert stsb["train"][1]["label"] == pytest.approx(3.8)
    rte = real("rte").splits
    assert rte["train"][0]["label"] == 1 and rte["train"][1]["label"] == 0  # not_entailment, entailment


def test_real_qnli_dev_with_fixture_train(tmp_path, glue_dir):
    (tmp_path / "QNLI").mkdir()
    (tmp_path / "QNLI" / "train.tsv").symlink_to(FIXTURES / "QNLI" / "train.tsv")
    (tmp_path / "QNLI" / "dev.tsv").symlink_to(glue_dir / "QNLI" / "dev.tsv")
    dev = load_task("qnli", tmp_path).splits["validation"]
    assert len(dev) == 5463
    assert dev[0] == {
        "text_a": "What came into force after the new constitution was herald?",
        "text_b": "As of that day, the new constitution heralding the Second Republic came into force.",
        "label": 0,
    }
    assert set(dev["label"]) == {0, 1}


# --- fixtures for the files not in shared/ ------------------------------------------------------------------------


def test_fixture_qqp():
    data = load_task("qqp", FIXTURES)
    assert (data.num_labels, data.primary_metric, data.validation_splits) == (2, "accuracy", ("validation",))
    assert data.splits["train"]["label"] == [1, 0, 1, 0, 1]
    assert data.splits["train"][2]["text_a"] == 'What\'s the "best" laptop for students in 2016?'
    assert len(data.splits["validation"]) == 3


def test_fixture_mnli():
    data = load_task("mnli", FIXTURES)
    assert list(data.splits) == ["train", "validation_matched", "validation_mismatched"]
    assert data.label_names == ["entailment", "neutral", "contradiction"] and data.num_labels == 3
    assert data.splits["train"]["label"] == [1, 0, 2, 0, 2, 1]
    assert data.splits["validation_matched"][0] == {
        "text_a": "The new rules are simple enough",
        "text_b": "Everyone likes the new rules ",
        "label": 1,
    }
    assert data.splits["validation_mismatched"]["label"] == [2, 2, 0, 1]


def test_fixture_qnli_and_glue_dir_env(monkeypatch):
    monkeypatch.setenv("GLUE_DIR", str(FIXTURES))
    data = load_task("qnli")
    assert data.splits["train"]["label"] == [0, 1, 0, 1]
    assert data.splits["train"][0]["text_a"] == "When did the museum first open?"


def test_task_specs():
    assert list(TASKS) == ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"]
    assert {t: s.primary_metric for t, s in TASKS.items() if s.primary_metric != "accuracy"} == {
        "cola": "matthews_correlation",
        "stsb": "pearson",
    }
    assert TASKS["stsb"].is_regression and TASKS["stsb"].num_labels == 1
    assert all(spec.hub_name == name for name, spec in TASKS.items())


def test_hub_columns_are_mapped(monkeypatch):
    """The hub code path (never downloads here): columns renamed, idx and test dropped, ids kept."""
    monkeypatch.delenv("GLUE_DIR", raising=False)
    names = ["entailment", "neutral", "contradiction"]
    features = Features({"premise": Value("string"), "hypothesis": Value("string"),
                         "label": ClassLabel(names=names), "idx": Value("int32")})  # fmt: skip
    rows = {"premise": ["p0", "p1"], "hypothesis": ["h0", "h1"], "label": [2, 0], "idx": [0, 1]}
    split_names = ["train", "validation_matched", "validation_mismatched", "test_matched"]
    hub = DatasetDict({split: Dataset.from_dict(rows, features=features) for split in split_names})
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *args: calls.append(args) or hub)
    data = load_task("mnli")
    assert calls == [("nyu-mll/glue", "mnli")]
    assert list(data.splits) == ["train", "validation_matched", "validation_mismatched"]
    assert data.splits["train"].to_dict() == {"text_a": ["p0", "p1"], "text_b": ["h0", "h1"], "label": [2, 0]}
    assert data.splits["train"].features["label"] == Value("int64")


# --- custom data --------------------------------------------------------------------------------------------------


def test_custom_csv_string_labels(tmp_path):
    train = write_csv(tmp_path / "train.csv", [["id", "review", "stars"], [1, "great, really", "pos"],
                                               [2, 'said "meh"', "neutral"], [3, "awful\nfilm", "neg"]])  # fmt: skip
    dev = write_csv(tmp_path / "dev.csv", [["id", "review", "stars"], [4, "fine", "neg"]])
    data = load_task("custom", train_file=train, validation_file=dev, text_columns=["review"], label_column="stars")
    assert data.label_names == ["neg", "neutral", "pos"] and not data.is_regression
    assert data.splits["train"].to_dict() == {"text_a": ["great, really", 'said "meh"', "awful\nfilm"],
                                              "label": [2, 1, 0]}  # fmt: skip
    assert data.splits["validation"]["label"] == [0]
    assert (data.task, data.primary_metric, data.spec.metric_names) == ("custom", "accuracy", ("accuracy", "f1_macro"))


def test_custom_jsonl_regression_and_pairs(tmp_path):
    rows = [{"a": "x", "b": "y", "score": 0.5}, {"a": "z", "b": "w", "score": 3}]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    dev = write(tmp_path / "dev.json", '{"a": "u", "b": "v", "score": "4.25"}\n\n')
    data = load_task("custom", train_file=train, validation_file=dev, text_columns=["a", "b"], label_column="score")
    assert data.is_regression and data.label_names is None and data.num_labels == 1
    assert data.primary_metric == "pearson"
    assert data.splits["train"].to_dict() == {"text_a": ["x", "z"], "text_b": ["y", "w"], "label": [0.5, 3.0]}
    assert data.splits["validation"]["label"] == [4.25]


def test_custom_integer_labels_are_classes(tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", [{"t": "a", "label": 1}, {"t": "b", "label": 0}, {"t": "c", "label": 10}])
    dev = write(tmp_path / "v.csv", "t,label\n\nd,1\n\n")  # blank lines are skipped
    data = load_task("custom", train_file=train, validation_file=dev, text_columns=["t"])
    assert data.label_names == ["0", "1", "10"]
    assert data.splits["train"]["label"] == [1, 0, 2] and data.splits["validation"]["label"] == [1]


# --- errors -------------------------------------------------------------------------------------------------------


def test_unknown_task_lists_known_ones(glue_dir):
    with pytest.raises(SoraError, match=r"unknown task 'sst-2'; known tasks: cola, sst2, .*wnli, custom"):
        load_task("sst-2", glue_dir)


def test_missing_train_file_is_named(tmp_path, glue_dir):
    (tmp_path / "QNLI").mkdir()
    (tmp_path / "QNLI" / "dev.tsv").symlink_to(glue_dir / "QNLI" / "dev.tsv")
    with pytest.raises(SoraError, match=r"QNLI/train\.tsv: no such file"):
        load_task("qnli", tmp_path)


def test_custom_arguments_on_glue_task_are_refused(glue_dir):
    with pytest.raises(SoraError, match="are for task 'custom'"):
        load_task("rte", glue_dir, text_columns=["sentence1"])


@pytest.mark.parametrize(
    ("task", "train", "message"),
    [
        ("sst2", "sentence\tlabel\ngood\t1\nbad\t2\n", r"SST-2/train\.tsv:3: label '2' is not one of 0, 1$"),
        ("rte", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tyes\n", r":2: label 'yes' is not one of entailment"),
        ("stsb", STSB_HEADER + "0\tg\tf\ty\t0\ts\ts\ta\tb\tfive\n", r":2: label 'five' is not a number"),
        ("stsb", STSB_HEADER + "0\tg\tf\ty\t0\ts\ts\ta\tb\tnan\n", r":2: label 'nan' is not a number"),
        ("sst2", "sentence\tlabel\ngood\t1\nbad\n", r"SST-2/train\.tsv:3: expected 2 columns, got 1$"),
        ("sst2", "sentence\tlabel\ngood\t1\tx\n", r":2: expected 2 columns, got 3$"),
        ("sst2", "sentence\tlabel\ngood\t1\nbad\t\n", r"SST-2/train\.tsv:3: empty label in column 'label'$"),
        ("cola", "gj04\t1\t\tfine.\ngj04\t1\tno label\n", r"CoLA/train\.tsv:2: expected 4 columns, got 3$"),
        ("sst2", b"sentence\tlabel\ngood\t1\nbad \xff\t0\n", r"SST-2/train\.tsv:3: not UTF-8 \(byte 0xff\)$"),
        ("sst2", "", r"SST-2/train\.tsv: no data rows$"),
        ("sst2", "sentence\tlabel\n", r"SST-2/train\.tsv: no data rows$"),
        ("mrpc", "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\n1\t1\t2\ta\n", r"MRPC/train\.tsv:2: no column '#2 String'"),
    ],
)  # fmt: skip
def test_glue_errors(tmp_path, glue_dir, task, train, message):
    err = glue_error(tmp_path, glue_dir, task, train)
    assert len(err.splitlines()) == 1 and re.search(message, err), err


@pytest.mark.parametrize(
    ("train", "validation", "kwargs", "message"),
    [
        ("t.csv", "v.csv", {"text_columns": ["nope"]}, r"t\.csv:2: no column 'nope' \(columns: text, label\)"),
        ("t.csv", "v.csv", {"text_columns": ["text"], "label_column": "y"}, r"t\.csv:2: no column 'y'"),
        ("t.csv", "v.csv", {}, r"needs 1 or 2 text_columns, got \[\]"),
        ("t.csv", "v.csv", {"text_columns": ["a", "b", "c"]}, r"needs 1 or 2 text_columns"),
        ("t.csv", "unseen.csv", {"text_columns": ["text"]}, r"unseen\.csv:3: label 'maybe' is not one of no, yes$"),
        ("t.csv", "empty.jsonl", {"text_columns": ["text"]}, r"empty\.jsonl: no data rows$"),
        ("t.csv", "header.csv", {"text_columns": ["text"]}, r"header\.csv: no data rows$"),
        ("t.csv", "bad.jsonl", {"text_columns": ["text"]}, r"bad\.jsonl:2: malformed JSON line"),
        ("t.csv", "list.jsonl", {"text_columns": ["text"]}, r"list\.jsonl:1: expected a JSON object, got list$"),
        ("t.csv", "null.jsonl", {"text_columns": ["text"]}, r"null\.jsonl:1: column 'label' holds NoneType"),
        ("t.csv", "latin1.csv", {"text_columns": ["text"]}, r"latin1\.csv:3: not UTF-8 \(byte 0xe9\)$"),
        ("t.csv", "short.csv", {"text_columns": ["text"]}, r"short\.csv:2: expected 2 columns, got 1$"),
        ("t.csv", "v.txt", {"text_columns": ["text"]}, r"v\.txt: unknown file type '\.txt'"),
        ("t.csv", "missing.csv", {"text_columns": ["text"]}, r"missing\.csv: cannot read \(No such file"),
        ("t.csv", None, {"text_columns": ["text"]}, r"needs both train_file and validation_file"),
        ("blank.csv", "v.csv", {"text_columns": ["text"]}, r"blank\.csv:3: empty label in column 'label'$"),
    ],
)  # fmt: skip
def test_custom_errors(tmp_path, train, validation, kwargs, message):
    write(tmp_path / "t.csv", "text,label\nhello,yes\nbye,no\n")
    write(tmp_path / "v.csv", "text,label\nhi,yes\n")
    write(tmp_path / "v.txt", "text,label\nhi,yes\n")
    write(tmp_path / "unseen.csv", "text,label\nhi,yes\nhm,maybe\n")
    write(tmp_path / "blank.csv", "text,label\nhi,yes\nhm, \n")
    write(tmp_path / "empty.jsonl", "\n")
    write(tmp_path / "header.csv", "text,label\n")
    write(tmp_path / "bad.jsonl", '{"text": "a", "label": "yes"}\n{"text": "b", "label": yes}\n')
    write(tmp_path / "list.jsonl", '["a", "yes"]\n')
    write(tmp_path / "null.jsonl", '{"text": "a", "label": null}\n')
    write(tmp_path / "latin1.csv", "text,label\nhi,yes\ncaf\u00e9,no\n".encode("latin-1"))
    write(tmp_path / "short.csv", "text,label\nhi\n")
    validation_file = None if validation is None else tmp_path / validation
    with pytest.raises(SoraError) as e:
        load_task("custom", train_file=tmp_path / train, validation_file=validation_file, **kwargs)
    err = str(e.value)
    assert len(err.splitlines()) == 1 and re.search(message, err), err


# --- tokenize and subsample ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["wnli", "sst2"])
def test_tokenize_truncates_without_padding(real, tokenizer, task):
    data = real(task)
    data = TaskData(data.spec, DatasetDict({split: subsample(ds, 300, seed=0) for split, ds in data.splits.items()}))
    out = tokenize(data, tokenizer, max_seq_length=24)
    assert list(out) == list(data.splits)
    for split, ds in out.items():
        assert set(ds.column_names) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
        assert ds["labels"] == data.splits[split]["label"]
        assert ds.cache_files == []
        lengths = [len(ids) for ids in ds["input_ids"]]
        assert max(lengths) == 24 and min(lengths) < 24  # truncated, and not padded
        assert all(sum(mask) == n for mask, n in zip(ds["attention_mask"], lengths, strict=True))
        assert any(1 in types for types in ds["token_type_ids"]) == (task == "wnli")
    first = data.splits["train"][0]
    expected = tokenizer(first["text_a"], first.get("text_b"), truncation=True, max_length=24)["input_ids"]
    assert out["train"][0]["input_ids"] == expected


def test_tokenize_rejects_bad_length(tokenizer):
    with pytest.raises(SoraError, match="max_seq_length must be positive, got 0"):
        tokenize(load_task("qqp", FIXTURES), tokenizer, 0)


def test_subsample_is_deterministic():
    ds = Dataset.from_dict({"x": list(range(100))})
    a, b = subsample(ds, 10, seed=3), subsample(ds, 10, seed=3)
    assert len(a) == 10 and a["x"] == b["x"] and len(set(a["x"])) == 10
    assert a["x"] != subsample(ds, 10, seed=4)["x"] and a["x"] != list(range(10))
    assert subsample(ds, 100, seed=0) is ds and subsample(ds, None, seed=0) is ds
    with pytest.raises(SoraError, match="sample size must be positive, got 0"):
        subsample(ds, 0, seed=0)


def test_a_run_tokenizes_only_the_rows_it_keeps_and_keeps_the_rows_it_kept_before(glue_dir, monkeypatch, tmp_path):
    """SST-2 with --max-train-samples 4000 (the README's main job, seed 42) tokenizes 4,000 training rows, not all
    67,349, and they are the rows, in the order, that the runs behind BENCHMARKS.md trained on: the whole splits
    tokenized, then subsampled."""
    data_dir, out = str(glue_dir), str(tmp_path / "run")
    cfg = TrainConfig("sst2", out, data_dir=data_dir, model=MINILM, max_train_samples=4000, max_eval_samples=300)
    tokenized = []

    def counting(data: TaskData, *args):
        tokenized.append({split: len(ds) for split, ds in data.splits.items()})
        return tokenize(data, *args)

    monkeypatch.setattr(classification, "tokenize", counting)
    data, tokenizer, train_set, dev = classification.load_inputs(cfg)
    assert tokenized == [{"train": 4000, "validation": 300}]
    assert len(data.splits["train"]) == 67349  # the task itself stays whole

    before = tokenize(data, tokenizer, cfg.max_seq_length)  # the previous order: tokenize everything, then subsample
    assert train_set.to_dict() == subsample(before["train"], 4000, seed=42).to_dict()
    assert dev["validation"].to_dict() == subsample(before["validation"], 300, seed=42).to_dict()


# --- property tests: whatever is written in a task's format reads back --------------------------------------------

PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TSV_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12)  # no tab, newline or CR
ANY_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)


@st.composite
def glue_files(draw):
    """A task, and for each of its files the lines to write and the (texts, label) it must read back as."""
    task = draw(st.sampled_from(list(TASKS)))
    spec = TASKS[task]
    files = {}
    for split in ("train", *spec.validation_splits):
        header = MNLI_DEV_HEADER if split.startswith("validation_") else HEADERS[task]
        columns = header or spec.columns
        lines = [] if header is None else [header]
        expected = []
        for _ in range(draw(st.integers(1, 4))):
            row = {column: draw(TSV_TEXT) for column in columns}
            if spec.is_regression:
                score = draw(st.floats(0, 5))
                row[spec.label_column], label = f"{score:.3f}", float(np.float32(f"{score:.3f}"))
            else:
                label = draw(st.integers(0, spec.num_labels - 1))
                row[spec.label_column] = spec.label_names[label]
            lines.append([row[column] for column in columns])
            expected.append(([row[column] for column in spec.text_columns], label))
        end = "\n" if draw(st.booleans()) else ""
        files["dev" + split.removeprefix("validation") if split != "train" else "train"] = (
            "\n".join("\t".join(line) for line in lines) + end,
            expected,
        )
    return task, files


@PROPERTY
@given(glue_files())
def test_glue_tsv_round_trip(case):
    task, files = case
    with tempfile.TemporaryDirectory() as tmp:
        for name, (text, _) in files.items():
            write(Path(tmp) / TASKS[task].glue_dir / f"{name}.tsv", text)
        data = load_task(task, tmp)
    for (_, expected), ds in zip(files.values(), data.splits.values(), strict=True):
        read = [([row[key] for key in ("text_a", "text_b") if key in row], row["label"]) for row in ds]
        assert read == expected


@PROPERTY
@given(
    suffix=st.sampled_from([".csv", ".jsonl"]),
    train=st.lists(st.tuples(ANY_TEXT, ANY_TEXT, st.text(max_size=4).map("c".__add__)), min_size=1, max_size=6),
    picks=st.lists(st.tuples(ANY_TEXT, st.integers(0, 5)), min_size=1, max_size=4),
)
def test_custom_classification_round_trip(suffix, train, picks):
    train_labels = [label for *_, label in train]
    validation = [(text, "", train_labels[i % len(train)]) for text, i in picks]
    names = sorted(set(train_labels))
    data = _load_custom_rows(suffix, train, validation)
    assert data.label_names == names
    for rows, ds in ((train, data.splits["train"]), (validation, data.splits["validation"])):
        assert ds.to_dict() == {"text_a": [a for a, *_ in rows], "text_b": [b for _, b, _ in rows],
                                "label": [names.index(label) for *_, label in rows]}  # fmt: skip


@PROPERTY
@given(
    suffix=st.sampled_from([".csv", ".jsonl"]),
    train=st.lists(st.tuples(ANY_TEXT, ANY_TEXT, st.floats(-1e3, 1e3, width=32)), max_size=6),
    validation=st.lists(st.tuples(ANY_TEXT, ANY_TEXT, st.floats(-1e3, 1e3, width=32)), min_size=1, max_size=4),
)
def test_custom_regression_round_trip(suffix, train, validation):
    train = [*train, ("half", "", 0.5)]
    data = _load_custom_rows(suffix, train, validation)
    assert data.is_regression
    for rows, ds in ((train, data.splits["train"]), (validation, data.splits["validation"])):
        assert ds["text_a"] == [a for a, *_ in rows] and ds["text_b"] == [b for _, b, _ in rows]
        assert ds["label"] == [float(np.float32(y)) for *_, y in rows]


def _load_custom_rows(suffix: str, train: list[tuple], validation: list[tuple]) -> TaskData:
    """Write (a, b, label) rows as a CSV or JSONL train and validation file, with an extra column, and load them."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name, rows in (("train", train), ("validation", validation)):
            path = Path(tmp) / f"{name}{suffix}"
            records = [{"a": a, "extra": "x", "b": b, "y": y} for a, b, y in rows]
            if suffix == ".csv":
                write_csv(path, [list(records[0]), *(list(r.values()) for r in records)])
            else:
                write_jsonl(path, records)
            paths.append(path)
        return load_task("custom", train_file=paths[0], validation_file=paths[1], text_columns=["a", "b"],
                         label_column="y")  # fmt: skip
