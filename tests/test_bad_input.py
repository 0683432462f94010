"""Bad input, one row each: a non-zero exit (or a SoraError from the Python API), exactly one stderr line that names
the problem, no traceback, and no partial output (the output folder absent, or byte-for-byte unchanged).

Every row fails before any training; the rows about adapters share one tiny trained run (module fixture). The rows
that must load a base model (an eval) would also show transformers' "Loading weights" progress bar and a library
FutureWarning on stderr: progress and library warnings are not error messages, so they are silenced here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification
from transformers.utils import logging as hf_logging

from sora import SoraConfig, SoraError, get_sora_model
from sora.cli import main
from sora.model import load_safetensors, load_sora
from sora.optim import SoraOptimizer
from sora.train import TrainConfig, evaluate_adapter, train

RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"
RTE_ROWS = "".join(
    f"{i}\tThe cat sat on mat number {i}.\tA cat sat.\t{'entailment' if i % 2 else 'not_entailment'}\n"
    for i in range(8)
)
CSV = "text,label\n" + "a fine film,pos\nawful,neg\n" * 4


@dataclass
class Env:
    """The files a row may point at; ``out`` is where a row's output would go (it must not appear)."""

    tmp: Path
    glue: Path
    run: Path  # a finished `sora train` run folder (module fixture, read-only here)
    out: Path

    @property
    def adapter(self) -> Path:
        return self.run / "adapter"

    def glue_with(self, train_tsv: str | bytes) -> str:
        """A GLUE folder whose RTE train.tsv is ``train_tsv`` (dev.tsv valid)."""
        folder = self.tmp / "glue" / "RTE"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "dev.tsv").write_text(RTE_HEADER + RTE_ROWS)
        target = folder / "train.tsv"
        target.write_bytes(train_tsv if isinstance(train_tsv, bytes) else train_tsv.encode())
        return str(self.tmp / "glue")

    def file(self, name: str, content: str | bytes) -> str:
        path = self.tmp / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(path)

    def adapter_copy(self, edit: Callable[[Path], None]) -> str:
        copy = self.tmp / "adapter"
        shutil.copytree(self.adapter, copy)
        edit(copy)
        return str(copy)

    def train(self, *args: str) -> list[str]:
        return ["train", "--output-dir", str(self.out), *args]

    def rte(self, *args: str) -> list[str]:
        return self.train("--task", "rte", "--data-dir", str(self.glue), *args)

    def custom(self, train_file: str, *args: str, validation: str | None = None) -> list[str]:
        validation = validation or self.file("dev.csv", CSV)
        return self.train("--task", "custom", "--train-file", train_file, "--validation-file", validation, *args)

    def eval(self, adapter: str | Path, *args: str) -> list[str]:
        output = str(self.out / "eval.json")
        return ["eval", "--adapter", str(adapter), "--data-dir", str(self.glue), "--output", output, *args]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _pickle_as_safetensors(adapter: Path) -> None:
    torch.save({"x": torch.zeros(2)}, adapter / "adapter_model.safetensors")  # a pickle under a safetensors name


def _pickle_only(adapter: Path) -> None:
    torch.save({"x": torch.zeros(2)}, adapter / "adapter_model.bin")
    (adapter / "adapter_model.safetensors").unlink()


def _other_model(env: Env) -> str:
    """A randomly initialised 6-layer BERT of another hidden size (64; MiniLM-L6 has 384), saved like a local model."""
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=6, num_attention_heads=4, intermediate_size=128)
    folder = env.tmp / "bert64"
    BertForSequenceClassification(cfg).save_pretrained(folder)
    return str(folder)


def _empty_dir(env: Env, name: str) -> str:
    (env.tmp / name).mkdir()
    return str(env.tmp / name)


# (id, argv builder, substring(s) of the one stderr line)
CLI_ROWS: list[tuple[str, Callable[[Env], list[str]], str | tuple[str, ...]]] = [
    (
        "glue-file-missing",
        lambda e: e.train("--task", "rte", "--data-dir", str(e.tmp / "nodata")),
        "train.tsv: no such file",
    ),
    (
        "custom-file-missing",
        lambda e: e.custom(str(e.tmp / "missing.csv"), "--text-columns", "text"),
        "missing.csv: cannot read",
    ),
    ("empty-file", lambda e: e.custom(e.file("empty.csv", ""), "--text-columns", "text"), "empty.csv: no data rows"),
    (
        "header-only-file",
        lambda e: e.custom(e.file("head.csv", "text,label\n"), "--text-columns", "text"),
        "head.csv: no data rows",
    ),
    (
        "tsv-too-few-columns",
        lambda e: e.train("--task", "rte", "--data-dir", e.glue_with(RTE_HEADER + RTE_ROWS + "8\tonly one sentence\n")),
        "train.tsv:10: expected 4 columns, got 2",
    ),
    (
        "label-outside-the-task",
        lambda e: e.train("--task", "rte", "--data-dir", e.glue_with(RTE_HEADER + "0\ta\tb\tmaybe\n")),
        "train.tsv:2: label 'maybe' is not",
    ),
    (
        "not-utf8",
        lambda e: e.train(
            "--task", "rte", "--data-dir", e.glue_with(RTE_HEADER.encode() + b"0\tcaf\xe9\tb\tentailment\n")
        ),
        "train.tsv:2: not UTF-8 (byte 0xe9)",
    ),
    ("unknown-task", lambda e: e.train("--task", "imdb", "--data-dir", str(e.glue)), "unknown task 'imdb'"),
    (
        "unknown-model-no-folder",
        lambda e: e.rte("--model", str(e.tmp / "no-such-model")),
        ("cannot load a tokenizer from", "no-such-model"),
    ),
    (
        "unknown-model-no-config",
        lambda e: e.rte("--model", _empty_dir(e, "empty-model")),
        ("cannot load a tokenizer from", "empty-model"),
    ),
    ("unknown-method", lambda e: e.rte("--method", "qlora"), "argument --method: invalid choice: 'qlora'"),
    ("r-zero", lambda e: e.rte("--r", "0"), "r must be > 0, got 0"),
    ("r-negative", lambda e: e.rte("--r", "-3"), "r must be > 0, got -3"),
    ("xi-negative", lambda e: e.rte("--xi", "-0.1"), "xi must be a finite number >= 0, got -0.1"),
    ("lr-zero", lambda e: e.rte("--lr", "0"), "lr must be > 0, got 0.0"),
    ("lr-negative", lambda e: e.rte("--lr", "-0.001"), "lr must be > 0, got -0.001"),
    ("r-not-a-number", lambda e: e.rte("--r", "four"), "argument --r/--lora-r: invalid int value: 'four'"),
    (
        "max-train-samples-negative",
        lambda e: e.rte("--max-train-samples", "-5"),
        "max_train_samples must be > 0, got -5",
    ),
    (
        "custom-missing-label-column",
        lambda e: e.custom(e.file("nolabel.csv", "text,stars\nok,5\n"), "--text-columns", "text"),
        "nolabel.csv:2: no column 'label'",
    ),
    (
        "custom-jsonl-malformed",
        lambda e: e.custom(
            e.file("bad.jsonl", '{"text": "ok", "label": "a"}\n{"text": "no\n'), "--text-columns", "text"
        ),
        "bad.jsonl:2: malformed JSON line",
    ),
    (
        "custom-three-text-columns",
        lambda e: e.custom(e.file("t.csv", CSV), "--text-columns", "a,b,c"),
        "needs 1 or 2 text_columns",
    ),
    (
        "eval-adapter-for-another-model",
        lambda e: e.eval(e.adapter, "--model", _other_model(e)),
        "size mismatch for base_model.model.bert.encoder.layer.0",
    ),
    (
        "eval-truncated-safetensors",
        lambda e: e.eval(e.adapter_copy(lambda a: _truncate(a / "adapter_model.safetensors"))),
        "not a readable safetensors file",
    ),
    (
        "eval-pickle-only",
        lambda e: e.eval(e.adapter_copy(_pickle_only)),
        "no adapter_model.safetensors (pickled weights are not loaded)",
    ),
    (
        "eval-pickle-named-safetensors",
        lambda e: e.eval(e.adapter_copy(_pickle_as_safetensors)),
        "not a readable safetensors file",
    ),
    ("eval-not-an-adapter", lambda e: e.eval(_empty_dir(e, "plain")), "not an adapter written by `sora train`"),
    ("eval-no-such-folder", lambda e: e.eval(e.tmp / "gone"), "gone: no such adapter folder"),
    ("eval-other-task", lambda e: e.eval(e.adapter, "--task", "sst2"), "was trained on task 'rte', not 'sst2'"),
    ("ranks-without-ranks-json", lambda e: ["ranks", _empty_dir(e, "bare-run")], "has no ranks.json"),
    (
        "report-missing-folder",
        lambda e: ["report", str(e.tmp / "never-ran"), "--output", str(e.out / "r.html")],
        "never-ran does not exist",
    ),
    (
        "schedule-bad-xi-list",
        lambda e: ["schedule", "--task", "rte", "--output-dir", str(e.out), "--xi-list", "0.1,x"],
        "--xi-list takes comma-separated xi values such as 0.1,0.3,0.5, got '0.1,x'",
    ),
    ("no-command", lambda e: [], "the following arguments are required: command"),
    (
        "export-no-such-folder",
        lambda e: ["export", str(e.tmp / "gone"), "--uniform-rank", "--output", str(e.out)],
        ("gone does not exist", "give a run folder or an adapter folder"),
    ),
    (
        "export-gguf-no-such-folder",
        lambda e: ["export", str(e.tmp / "gone"), "--gguf", "--output", str(e.out / "adapter.gguf")],
        "gone does not exist",
    ),
    (
        "export-a-file",
        lambda e: ["export", e.file("notes.txt", "mine"), "--uniform-rank", "--output", str(e.out)],
        "notes.txt is not a folder",
    ),
    (
        "export-not-an-adapter",
        lambda e: ["export", _empty_dir(e, "plain"), "--uniform-rank", "--output", str(e.out)],
        "plain: no LoRA adapter here (no adapter_config.json",
    ),
    (
        "train-unknown-reporter",
        lambda e: e.rte("--report-to", "bogus"),
        "unknown --report-to 'bogus'; known: none, all, azure_ml,",
    ),
]


def _snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``folder`` (empty if it does not exist)."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, glue_dir) -> Path:
    """One tiny SoRA run on RTE (16 pairs, one epoch), trained in-process on one thread."""
    out = tmp_path_factory.mktemp("bad_input") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # faster on a shared 2-core machine than 2 contended threads
    try:
        argv = ["train", "--task", "rte", "--data-dir", str(glue_dir), "--output-dir", str(out), "--r", "2"]
        argv += ["--max-train-samples", "16", "--max-eval-samples", "8", "--max-seq-length", "32", "--epochs", "1"]
        assert main([*argv, "--batch-size", "8"]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(autouse=True)
def _no_progress_bars_or_library_warnings():
    hf_logging.disable_progress_bar()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield
    hf_logging.enable_progress_bar()


@pytest.fixture
def env(tmp_path, glue_dir, trained_run) -> Env:
    return Env(tmp=tmp_path, glue=glue_dir, run=trained_run, out=tmp_path / "out")


def _one_error_line(err: str, needle: str | tuple[str, ...]) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("sora: error: "), lines[0]
    for part in (needle,) if isinstance(needle, str) else needle:
        assert part in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(("build", "needle"), [pytest.param(b, n, id=i) for i, b, n in CLI_ROWS])
def test_cli_bad_input_is_one_line_and_writes_nothing(env, capsys, build, needle):
    run_before = _snapshot(env.run)
    argv = build(env)
    capsys.readouterr()
    assert main(argv) == 2
    _one_error_line(capsys.readouterr().err, needle)
    assert not env.out.exists(), sorted(env.out.rglob("*"))
    assert _snapshot(env.run) == run_before


def test_a_foreign_output_folder_is_left_as_it_was(env, capsys):
    env.out.mkdir()
    (env.out / "notes.txt").write_text("mine")
    before = _snapshot(env.out)
    assert main(env.rte()) == 2
    _one_error_line(capsys.readouterr().err, "is not empty and is not a sora run folder")
    assert _snapshot(env.out) == before


@pytest.mark.parametrize(
    ("changed", "needle"),
    [
        (["--r", "4"], ("--resume with other settings than the run in", ": r differ")),
        (["--r", "2", "--xi", "0.25"], "xi differ"),
        ([], "holds a run already: pass --resume"),
    ],
    ids=["resume-other-r", "resume-other-xi", "no-resume"],
)
def test_resume_with_other_settings_is_refused_and_the_run_kept(env, glue_dir, capsys, changed, needle):
    run = env.tmp / "run"
    shutil.copytree(env.run, run)
    config = json.loads((run / "run_config.json").read_text())
    config["output_dir"] = str(run)  # the copy is its own run
    (run / "run_config.json").write_text(json.dumps(config))
    before = _snapshot(run)
    argv = ["train", "--task", "rte", "--data-dir", str(glue_dir), "--output-dir", str(run)]
    argv += ["--max-train-samples", "16", "--max-eval-samples", "8", "--max-seq-length", "32", "--epochs", "1"]
    argv += ["--batch-size", "8", *(changed or ["--r", "2"])]
    assert main([*argv, *(["--resume"] if changed else [])]) == 2
    _one_error_line(capsys.readouterr().err, needle)
    assert _snapshot(run) == before


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        # unknown-task loads the Trainer's stack in a fresh interpreter (~7 s); r-negative stops before it
        pytest.param(
            ["train", "--task", "imdb", "--output-dir", "{out}"], "unknown task 'imdb'", marks=pytest.mark.slow
        ),
        (["train", "--task", "rte", "--r", "-1", "--output-dir", "{out}"], "r must be > 0, got -1"),
    ],
    ids=["unknown-task", "r-negative"],
)
def test_the_cli_process_prints_one_line_and_no_traceback(tmp_path, argv, needle):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "sora", *(a.format(out=out) for a in argv)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 2
    _one_error_line(result.stderr, needle)
    assert result.stdout == "" and not out.exists()


# ---------------------------------------------------------------------------------------------------------------
# the Python API: a SoraError naming the problem, nothing written


def _bert2():
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    return BertForSequenceClassification(cfg).eval()


API_ROWS: list[tuple[str, Callable[[Env], object], str]] = [
    (
        "unknown-method",
        lambda e: TrainConfig(task="rte", output_dir=str(e.out), method="qlora"),
        "unknown method 'qlora'",
    ),
    ("r-zero", lambda e: TrainConfig(task="rte", output_dir=str(e.out), r=0), "r must be > 0"),
    (
        "xi-negative",
        lambda e: TrainConfig(task="rte", output_dir=str(e.out), xi=-1.0),
        "xi must be a finite number >= 0",
    ),
    ("lr-negative", lambda e: TrainConfig(task="rte", output_dir=str(e.out), lr=-1.0), "lr must be > 0"),
    (
        "unknown-target-module",
        lambda e: get_sora_model(_bert2(), SoraConfig(r_max=4, target_modules=["no_such_proj"], task_type="SEQ_CLS")),
        "do not fit this bert",
    ),
    ("sora-config-r-zero", lambda e: SoraConfig(r_max=0), "r_max must be a positive integer"),
    ("optimizer-without-gates", lambda e: SoraOptimizer(_bert2(), lr=1e-3), "the model has no SoRA gates"),
    (
        "train-unknown-task",
        lambda e: train(TrainConfig(task="imdb", output_dir=str(e.out), data_dir=str(e.glue))),
        "unknown task 'imdb'",
    ),
    (
        "evaluate-not-an-adapter",
        lambda e: evaluate_adapter(_empty_dir(e, "plain")),
        "not an adapter written by `sora train`",
    ),
    ("load-sora-no-config", lambda e: load_sora(_bert2(), _empty_dir(e, "nothing")), "no SoRA config here"),
    (
        "load-safetensors-pickle",
        lambda e: load_safetensors(e.file("w.safetensors", b"\x80\x04K\x01.")),
        "not a readable safetensors file",
    ),
]


@pytest.mark.parametrize(("call", "needle"), [pytest.param(c, n, id=i) for i, c, n in API_ROWS])
def test_api_bad_input_raises_one_line_sora_error(env, call, needle):
    with pytest.raises(SoraError) as info:
        call(env)
    message = str(info.value)
    assert needle in message and "\n" not in message, message
    assert not env.out.exists()
