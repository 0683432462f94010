"""``sora.cli.train_argv`` and ``config_from_argv``: a TrainConfig written as ``sora train`` arguments reads back
equal (defaults, lists, floats, switches, budgets, gate inits, learning rates), only what differs from the defaults
is written, and the benchmark runner's command line (``benchmarks/runner.py``: ``OMP_NUM_THREADS=N sora train`` and
these arguments) rewrites the commands of committed results."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from conftest import REPO, load_benchmark

from sora import SoraError
from sora.cli import config_from_argv, train_argv
from sora.run_config import TrainConfig

runner = load_benchmark("runner")

CONFIGS = {
    "defaults": TrainConfig(task="rte", output_dir="/runs/a"),
    "custom task, list of columns": TrainConfig(
        task="custom", output_dir="/runs/b", method="lora", train_file="t.csv", validation_file="v.csv",
        text_columns=["premise", "hypothesis"], label_column="y", max_train_samples=100,
    ),
    "floats and switches": TrainConfig(
        task="sst2", output_dir="/runs/c", data_dir="/glue", lr=3e-4, xi=1 / 3, lora_alpha=8, lora_dropout=0.05,
        epochs=2.5, warmup_ratio=0.1, weight_decay=0.0, gate_lr=1e-2, bf16=True, gradient_checkpointing=True,
        torch_compile=True, fsdp=True, report_to="tensorboard", eval_steps=50, save_steps=50, generate_eval=4,
    ),
    "constant gates, no budget": TrainConfig(task="mrpc", output_dir="/runs/d", gate_init=1.0, threshold="constant"),
    "a ratio budget, its defaults": TrainConfig(task="mrpc", output_dir="/runs/e", target_ratio=0.5),
    "a size budget, the paper's allocation": TrainConfig(
        task="stsb", output_dir="/runs/f", target_params=5000, gate_init="randn", budget_score="gate", gate_seed=3
    ),
    "adalora at lora's learning rate": TrainConfig(task="cola", output_dir="/runs/g", method="adalora", lr=1e-3),
    "full fine-tuning, its own rate": TrainConfig(task="cola", output_dir="/runs/h", method="full", r=4, seed=7),
    "causal-lm, a model": TrainConfig(
        task="causal-lm", output_dir="/runs/i", model="/models/smol", train_file="t.jsonl", max_seq_length=192
    ),
}  # fmt: skip


@pytest.mark.parametrize("cfg", CONFIGS.values(), ids=CONFIGS.keys())
def test_a_config_reads_back_from_its_arguments(cfg):
    assert config_from_argv(train_argv(cfg)) == cfg


def test_only_what_differs_from_the_defaults_is_written():
    # the gate init, resolved when the config is built, is always stated
    assert train_argv(CONFIGS["defaults"]) == [
        "--task", "rte", "--method", "sora", "--output-dir", "/runs/a", "--gate-init", "randn"
    ]  # fmt: skip
    assert train_argv(CONFIGS["a ratio budget, its defaults"]) == [
        "--task", "mrpc", "--method", "sora", "--output-dir", "/runs/e", "--gate-init", "1", "--target-ratio", "0.5",
        "--budget-score", "contribution",
    ]  # fmt: skip
    custom = train_argv(CONFIGS["custom task, list of columns"])
    assert custom[custom.index("--text-columns") + 1] == "premise,hypothesis"
    floats = train_argv(CONFIGS["floats and switches"])
    assert floats[floats.index("--xi") + 1] == repr(1 / 3)  # %g would round it
    assert floats[floats.index("--lr") + 1] == "0.0003" and floats[floats.index("--epochs") + 1] == "2.5"
    assert {"--bf16", "--gradient-checkpointing", "--torch-compile", "--fsdp"} <= set(floats)
    assert "--fp16" not in floats and "--weight-decay" in floats  # 0.0 is not the default 0.01
    # the learning rate is stated where it is not the method's default
    assert train_argv(CONFIGS["adalora at lora's learning rate"])[-2:] == ["--lr", "0.001"]
    assert "--lr" not in train_argv(CONFIGS["full fine-tuning, its own rate"])  # full's 5e-5


def test_bad_arguments_are_one_line():
    with pytest.raises(SoraError, match=r"^the following arguments are required: --output-dir$"):
        config_from_argv(["--task", "rte"])
    with pytest.raises(SoraError, match=r"^unrecognized arguments: --no-such$"):
        config_from_argv(["--task", "rte", "--output-dir", "x", "--no-such"])


# --- the committed results' commands ------------------------------------------------------------------------------

RESULTS = REPO / "benchmarks" / "results"
PATHS = ("output_dir", "data_dir", "train_file", "validation_file")  # what a result's hyperparameters leave out


def _committed(folders: tuple[str, ...], select=lambda path: True) -> list[Path]:
    """The committed results of ``folders`` that trained here (not copied from another experiment), as selected."""
    paths = [p for folder in folders for p in sorted((RESULTS / folder).glob("*.json")) if select(p)]
    return [p for p in paths if (r := json.loads(p.read_text()))["command"] and "reused_from" not in r]


def _command(path: Path) -> tuple[dict, int, list[str]]:
    """A result, the threads and the ``sora train`` arguments of its command."""
    result = json.loads(path.read_text())
    threads, sora, command, *argv = shlex.split(result["command"])
    assert threads.startswith("OMP_NUM_THREADS=") and (sora, command) == ("sora", "train")
    return result, int(threads.removeprefix("OMP_NUM_THREADS=")), argv


def _learned(path: Path) -> bool:
    return "-const-contribution_" in path.name


# Written by today's command line: the decoder benchmark's runs and the Equal-budget table's learned-allocation rows
CURRENT = _committed(("decoder",)) + _committed(("glue/equal",), _learned)
# Written while N(0, 1) was TrainConfig's declared gate init (``--gate-init randn`` left implied), the paper's budget
# rows with the options they gained when the budget defaults changed appended at the end
OLDER = _committed(("glue/defaults",)) + _committed(("glue/equal",), lambda path: not _learned(path))


@pytest.mark.parametrize("path", CURRENT, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_the_runner_rewrites_the_commands_of_committed_results(path):
    """The TrainConfig rebuilt from the result (its task, method and hyperparameters; the paths from its command)
    gives the stored command back, character for character."""
    result, threads, argv = _command(path)
    paths = {name: getattr(config_from_argv(argv), name) for name in PATHS}
    cfg = TrainConfig(task=result["task"], method=result["method"], **paths, **result["hyperparameters"])
    assert runner.command_line(cfg, threads) == result["command"]


def _options(argv: list[str]) -> dict[str, str]:
    return dict(zip(argv[::2], argv[1::2], strict=True))  # these commands hold no switch


@pytest.mark.parametrize("path", OLDER, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_older_committed_commands_name_their_run(path):
    """An older command reads back as the run its result records (the budget score aside: older records hold the
    default of their day), and the runner writes the same options, the gate init stated."""
    result, threads, argv = _command(path)
    cfg = config_from_argv(argv)
    recorded = {k: v for k, v in result["hyperparameters"].items() if k != "budget_score"}
    assert {k: cfg.hyperparameters()[k] for k in recorded} == recorded
    rewritten = shlex.split(runner.command_line(cfg, threads))[3:]
    assert _options(rewritten) == {"--gate-init": "randn", **_options(argv)}


def test_the_committed_results_are_there():
    assert len(CURRENT) >= 50 and len(OLDER) >= 100
