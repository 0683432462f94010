"""Real tiny trainings (MiniLM, tens of examples, short sequences) through the CLI, for every method."""

import json
import subprocess
import sys
import warnings

import pytest
import torch
from conftest import MINILM
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from sora import SoraError
from sora.cli import main
from sora.data import TaskSpec
from sora.methods import METHODS
from sora.tasks.classification import load_classifier
from sora.train import TrainConfig, evaluate_adapter, train

TINY = [
    "--max-train-samples",
    "32",
    "--max-eval-samples",
    "24",
    "--max-seq-length",
    "48",
    "--batch-size",
    "16",
    "--epochs",
    "2",
    "--logging-steps",
    "1",
    "--r",
    "4",
]
SPARSE = ["--xi", "0.3", "--threshold", "constant", "--gate-init", "randn"]
METRIC_KEYS = {
    "task",
    "method",
    "model",
    "seed",
    "hyperparameters",
    "eval",
    "eval_final",
    "train_seconds",
    "seconds_per_epoch",
    "trainable_params",
    "nonzero_params",
    "ranks",
}


def _train(out, task, method, glue_dir, *extra):
    assert (
        main(
            [
                "train",
                "--task",
                task,
                "--method",
                method,
                "--data-dir",
                str(glue_dir),
                "--output-dir",
                str(out),
                *TINY,
                *extra,
            ]
        )
        == 0
    )
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory, glue_dir):
    """One RTE (a pair task) run per method; SoRA with random gates and a constant threshold, so it prunes.

    The five runs take ~25 s on 2 cores: every test that reads them is marked slow. The quick run (``-m "not slow"``)
    still trains SoRA on RTE end to end (test_bad_input.py, test_allocation.py), and SoRA, LoRA, AdaLoRA and full
    fine-tuning on a tiny decoder (test_causal_lm.py)."""
    base = tmp_path_factory.mktemp("runs")
    return {m: (base / m, _train(base / m, "rte", m, glue_dir, *SPARSE)) for m in METHODS}


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_writes_a_complete_run_folder(runs, method):
    out, metrics = runs[method]
    assert METRIC_KEYS <= metrics.keys()
    assert metrics["task"] == "rte" and metrics["method"] == method
    assert set(metrics["eval"]) == {"accuracy"} and 0 <= metrics["eval"]["accuracy"] <= 1
    assert metrics["train_seconds"] > 0 and metrics["seconds_per_epoch"] > 0
    assert metrics["nonzero_params"] > 0 and metrics["trainable_params"] > 0
    assert (out / "adapter").is_dir() and (out / "train_log.jsonl").is_file()
    ranks = json.loads((out / "ranks.json").read_text())["ranks"]
    assert ranks == metrics["ranks"]
    if method in ("full", "bitfit"):
        assert ranks == {} and (out / "adapter" / "model.safetensors").is_file()
    else:
        assert len(ranks) == 36 and (out / "ranks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert not list(out.glob("**/*.tmp")) and not (out / ".adapter.tmp").exists()


@pytest.mark.slow
def test_sora_prunes_and_logs_its_gates(runs):
    out, metrics = runs["sora"]
    lora = runs["lora"][1]
    assert sum(metrics["ranks"].values()) < 36 * 4, "xi=0.3 on N(0,1) gates should kill some ranks"
    assert metrics["nonzero_params"] < lora["nonzero_params"]
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "loss" in r]
    assert logged and all({"xi", "live_ranks", "nonzero_params", "learning_rate"} <= r.keys() for r in logged)
    best_step = int(metrics["best_checkpoint"].rsplit("-", 1)[1])  # the kept checkpoint's ranks are reported
    assert [r["live_ranks"] for r in logged if r["step"] == best_step] == [sum(metrics["ranks"].values())]
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["rank_pattern"]


@pytest.mark.slow
def test_bitfit_trains_only_biases_and_the_head(runs):
    metrics = runs["bitfit"][1]
    full = runs["full"][1]
    assert metrics["trainable_params"] < full["trainable_params"] / 50


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sora", "adalora", "full"])
def test_sora_eval_reproduces_the_reported_metric(runs, method, capsys, glue_dir):
    out, metrics = runs[method]
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                "--adapter",
                str(out / "adapter"),
                "--task",
                "rte",
                "--data-dir",
                str(glue_dir),
                "--max-eval-samples",
                "24",
                "--output",
                str(out / "eval.json"),
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == pytest.approx(metrics["eval"]) and json.loads((out / "eval.json").read_text()) == printed


@pytest.mark.slow
def test_the_exported_adapter_loads_in_plain_peft(runs):
    out, _ = runs["sora"]
    base = AutoModelForSequenceClassification.from_pretrained(MINILM, num_labels=2)
    model = PeftModel.from_pretrained(base, str(out / "adapter"))
    ranks = {
        n.split("base_model.model.")[-1]: m.r["default"]
        for n, m in model.named_modules()
        if hasattr(m, "r") and isinstance(getattr(m, "r", None), dict) and "default" in m.r
    }
    assert ranks == {n: r for n, r in runs["sora"][1]["ranks"].items() if r > 0}


def test_regression_task_stsb(tmp_path, glue_dir):
    metrics = _train(tmp_path / "stsb", "stsb", "sora", glue_dir)
    assert set(metrics["eval"]) == {"pearson", "spearmanr"}
    assert metrics["primary_metric"] == "pearson"


@pytest.mark.parametrize("labels", [(None, 2.5), (("neg", "pos"), 0.0)], ids=["regression", "classification"])
def test_a_regression_head_starts_at_the_mean_training_label(labels, tokenizer):
    """Its output bias is the mean label (so an adapter need not move the representation to reach it: see
    ``load_classifier``); a classification head keeps its usual zero bias."""
    names, want = labels
    spec = TaskSpec(name="t", text_columns=("text",), label_column="label", label_names=names)
    model = load_classifier(MINILM, spec, tokenizer, [1.0, 2.0, 4.5] if names is None else [0, 1, 1])
    assert torch.equal(model.classifier.bias, torch.full((spec.num_labels,), want))


def test_custom_csv_with_string_labels(tmp_path):
    rows = [("a great film", "pos"), ("awful and dull", "neg"), ("loved it", "pos"), ("boring", "neg")] * 6
    for name in ("train.csv", "dev.csv"):
        (tmp_path / name).write_text("text,label\n" + "".join(f"{t},{lab}\n" for t, lab in rows))
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--task",
                "custom",
                "--train-file",
                str(tmp_path / "train.csv"),
                "--validation-file",
                str(tmp_path / "dev.csv"),
                "--text-columns",
                "text",
                "--output-dir",
                str(out),
                *TINY,
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert "accuracy" in metrics["eval"]
    info = json.loads((out / "adapter" / "sora_task.json").read_text())
    assert info["spec"]["label_names"] == ["neg", "pos"]
    # eval on a file that holds one class only: the ids still follow the training label set
    (tmp_path / "pos.csv").write_text("text,label\nloved it,pos\nwonderful,pos\n")
    assert evaluate_adapter(out / "adapter", validation_file=str(tmp_path / "dev.csv")) == metrics["eval"]
    assert main(["eval", "--adapter", str(out / "adapter"), "--validation-file", str(tmp_path / "pos.csv")]) == 0
    with pytest.raises(SoraError, match="pass its --validation-file"):
        evaluate_adapter(out / "adapter")


def test_failures_are_one_line_and_leave_no_output(tmp_path, glue_dir, capsys):
    out = tmp_path / "never"
    assert main(["train", "--task", "rte", "--data-dir", str(tmp_path / "nodata"), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "RTE/train.tsv: no such file" in err
    assert not out.exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert main(["train", "--task", "rte", "--data-dir", str(glue_dir), "--output-dir", str(foreign)]) == 2
    assert "is not a sora run folder" in capsys.readouterr().err
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


@pytest.mark.slow
def test_an_existing_run_needs_resume(runs, glue_dir, capsys):
    out, _ = runs["lora"]
    assert (
        main(
            ["train", "--task", "rte", "--method", "lora", "--data-dir", str(glue_dir), "--output-dir", str(out), *TINY]
        )
        == 2
    )
    assert "holds a run already: pass --resume" in capsys.readouterr().err


def test_the_cli_process_prints_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sora", "train", "--task", "rte", "--r", "-1", "--output-dir", str(tmp_path / "x")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "sora: error: r must be > 0, got -1"


@pytest.mark.slow  # compiles the model: ~1 minute on 2 cores
def test_torch_compile_trains_the_same_adapter_as_eager(tmp_path, glue_dir, dropout_free_minilm):
    """``--torch-compile`` (the Trainer's ``torch_compile``) computes what eager mode does: the same live ranks and
    pruned adapter within float rounding (dropout off: compiled kernels draw their masks from another stream)."""
    extra = ["--model", str(dropout_free_minilm), "--max-seq-length", "32", "--epochs", "1", *SPARSE]
    subprocess.run(  # its own process: the compiled graphs stay out of the other tests
        [sys.executable, "-m", "sora", "train", "--task", "rte", "--data-dir", str(glue_dir), *TINY, *extra]
        + ["--output-dir", str(tmp_path / "compiled"), "--torch-compile"],
        check=True,
        capture_output=True,
    )
    eager = _train(tmp_path / "eager", "rte", "sora", glue_dir, *extra)
    compiled = json.loads((tmp_path / "compiled" / "metrics.json").read_text())
    assert compiled["hyperparameters"]["torch_compile"] and not eager["hyperparameters"]["torch_compile"]
    assert compiled["ranks"] == eager["ranks"] and compiled["nonzero_params"] < compiled["trainable_params"]
    adapters = [load_file(tmp_path / run / "adapter" / "adapter_model.safetensors") for run in ("compiled", "eager")]
    assert adapters[0].keys() == adapters[1].keys()
    for name, value in adapters[1].items():
        torch.testing.assert_close(adapters[0][name], value, atol=1e-5, rtol=1e-3, msg=name)


@pytest.mark.slow
def test_eval_refuses_a_pickled_adapter(tmp_path, runs):
    import shutil

    adapter = tmp_path / "adapter"
    shutil.copytree(runs["lora"][0] / "adapter", adapter)
    (adapter / "adapter_model.safetensors").rename(adapter / "adapter_model.bin")
    with pytest.raises(SoraError, match="pickled weights are not loaded"):
        evaluate_adapter(adapter)


def test_config_validation():
    with pytest.raises(SoraError, match="unknown method 'qlora'"):
        TrainConfig(task="rte", output_dir="x", method="qlora")
    with pytest.raises(SoraError, match="xi must be a finite number >= 0"):
        TrainConfig(task="rte", output_dir="x", xi=-1)
    with pytest.raises(SoraError, match="lr must be > 0"):
        TrainConfig(task="rte", output_dir="x", lr=0)
    assert train  # the Python API is the CLI's


@pytest.mark.slow
def test_ranks_and_report_commands_on_real_runs(runs, tmp_path, capsys):
    out, metrics = runs["sora"]
    assert main(["ranks", str(out)]) == 0
    sparsity = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["layer_sparsity"]
    assert set(sparsity) == {str(i) for i in range(6)}
    dead = 1 - sum(metrics["ranks"].values()) / (36 * 4)
    assert sum(sparsity.values()) / 6 == pytest.approx(dead)
    assert (out / "layer_sparsity.png").is_file() and (out / "ranks.png").is_file()
    report = tmp_path / "report.html"
    assert main(["report", *(str(runs[m][0]) for m in ("sora", "lora", "adalora")), "--output", str(report)]) == 0
    html = report.read_text()
    assert f"{metrics['nonzero_params']:,}" in html and "data:image/png;base64," in html
    assert (tmp_path / "report.md").is_file()
    assert main(["ranks", str(runs["full"][0])]) == 2


@pytest.mark.slow
def test_sora_eval_scores_the_examples_the_run_scored_whatever_its_seed(tmp_path, capsys, glue_dir):
    """A run with --seed 1 and a dev subset: `sora eval` with no subset flags scores that subset, not seed 42's, in the
    run's batches, so the numbers are metrics.json's bit for bit (STS-B: a Pearson of another subset differs)."""
    out = tmp_path / "seed1"
    metrics = _train(out, "stsb", "lora", glue_dir, "--seed", "1", "--max-eval-samples", "40")
    capsys.readouterr()
    scored = []
    for extra in ([], ["--max-eval-samples", "40"], ["--max-eval-samples", "40", "--seed", "42"]):
        assert main(["eval", "--adapter", str(out / "adapter"), "--data-dir", str(glue_dir), *extra]) == 0
        scored.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    assert scored[0] == metrics["eval"] and scored[1] == metrics["eval"]  # the same files, examples and batches
    assert scored[2]["pearson"] != pytest.approx(metrics["eval"]["pearson"], abs=1e-3)  # seed 42's subset


@pytest.mark.slow  # a run and an eval: ~9 s on 2 cores
def test_a_run_prints_no_future_warning(tmp_path, glue_dir):
    """PEFT reads transformers' deprecated `is_gradient_checkpointing` when it wraps a model: not shown to users."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _train(tmp_path / "run", "rte", "sora", glue_dir)
        assert main(["eval", "--adapter", str(tmp_path / "run" / "adapter"), "--data-dir", str(glue_dir)]) == 0
    assert not [w for w in caught if issubclass(w.category, FutureWarning)], [str(w.message) for w in caught]
