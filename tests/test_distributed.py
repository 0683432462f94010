"""Data-parallel SoRA on CPU (gloo), 2 processes, against one process: ``torchrun --nproc_per_node 2 -m sora train``
and ``accelerate launch --multi_gpu --num_processes 2 -m sora train`` (on a machine without CUDA accelerate's
``--multi_gpu`` launcher starts torchrun workers that the Trainer runs on CPU with gloo; its ``--cpu`` flag runs
several processes only through mpirun).

The two runs see the same global batch at every step: the training set is exactly one global batch (8 examples:
2 processes x 4 per device, or 1 process x 8), so every step of both runs averages the gradient of the mean loss
over the same 8 examples, whatever order the length-grouped (and, under DDP, sharded) sampler gives them in. The
backbone is the embedded MiniLM with its dropout set to 0 (dropout masks come from each process's RNG, so with
dropout the two runs would differ by more than rounding). With that, DDP's all-reduced gradient equals the
single-process gradient up to float32 rounding (different summation order and padding lengths), every rank applies
the same deterministic AdamW + proximal gate step, and the runs agree:

* the live ranks of every module (``metrics.json``, ``ranks.json``) exactly, with ranks killed by ``--xi``;
* the pruned adapter (``adapter_model.safetensors``: A and B·diag(g) of the live ranks): same keys and shapes,
  values within ``atol=1e-5, rtol=1e-3``: float32 rounding in the gradients, passed through Adam's division by
  sqrt(v) over four steps at lr 1e-3, gave a largest difference of 1.2e-6 here (values up to 0.07), while a
  wrong gradient (e.g. one rank's alone, not averaged) changes Adam's steps by up to ~lr = 1e-3 per entry;
* the logged training loss and gradient norm per step within ``rtol=1e-4``: the DDP loss and gradient are not
  scaled by the number of processes (Adam's step hardly sees such a scale, these numbers do);
* the dev accuracy of the kept checkpoint and of every epoch exactly (16 examples: a difference would be a
  flipped prediction, not rounding), and the same kept checkpoint.

With a sparsity budget (``--target-ratio``) instead of ``--xi``, every process steers xi from its own live count: the
counts agree because the gates do, so the processes take the same decisions and land on the single-process ranks.

``--r`` is left at its default under torchrun: torchrun's own argument parser rejects ``--r`` as an ambiguous
abbreviation of its ``--rdzv-*`` / ``--role`` / ``--run-path`` / ``--redirects`` options, even after the script
name. ``accelerate launch`` passes it through; its run gets ``--r 8`` (the default) to show that.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow  # every test here waits on torchrun / accelerate runs of 2 processes

WORLD = 2
GLOBAL_BATCH = 8
COMMON = [
    "--task",
    "rte",
    "--max-train-samples",
    str(GLOBAL_BATCH),
    "--max-eval-samples",
    "16",
    "--max-seq-length",
    "32",
    "--epochs",
    "4",
    "--warmup-ratio",
    "0",
    "--logging-steps",
    "1",
    "--gate-init",
    "randn",
    "--seed",
    "7",
]
XI = ["--xi", "0.3", "--threshold", "constant"]
BUDGET = ["--target-ratio", "0.5", "--epochs", "12"]  # 12 steps: the budget's plan needs more than 4
R_MAX = 8  # the default --r
MODULES = 36  # MiniLM-L6: 6 layers x 6 adapted weights


def _run(command: list[str], cwd) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launchers() -> dict[str, tuple[list[str], list[str]]]:
    """Each launcher's command up to ``-m sora``, and extra ``sora train`` options.

    torchrun's --standalone and accelerate's explicit free port keep off port 29500 (other jobs may hold it).
    """
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD)]
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(WORLD)]
    accelerate += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    accelerate += ["--main_process_port", str(_free_port())]
    return {"torchrun": (torchrun, []), "accelerate": (accelerate, ["--r", str(R_MAX)])}


LAUNCHERS = ("torchrun", "accelerate")


def _runs(base, launchers: list[str], options: list[str]) -> dict:
    """Run folders: one per launcher (2 processes x 4 per device) and ``single`` (1 process x 8)."""
    folders = {}
    for name in launchers:
        launcher, extra = _launchers()[name]
        folders[name] = base / name
        per_device = ["--batch-size", str(GLOBAL_BATCH // WORLD), *extra]
        _run([*launcher, "-m", "sora", "train", *options, *per_device, "--output-dir", str(folders[name])], base)
    folders["single"] = base / "single"
    single = ["--batch-size", str(GLOBAL_BATCH), "--output-dir", str(folders["single"])]
    _run([sys.executable, "-m", "sora", "train", *options, *single], base)
    return folders


@pytest.fixture(scope="module")
def common(glue_dir, dropout_free_minilm) -> list[str]:
    return [*COMMON, "--data-dir", str(glue_dir), "--model", str(dropout_free_minilm)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, common):
    return _runs(tmp_path_factory.mktemp("distributed"), list(LAUNCHERS), [*common, *XI])


@pytest.fixture(scope="module")
def budget_runs(tmp_path_factory, common):
    return _runs(tmp_path_factory.mktemp("distributed-budget"), ["torchrun"], [*common, *BUDGET])


def _metrics(out):
    return json.loads((out / "metrics.json").read_text())


def _log(out):
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_ddp_writes_one_complete_run_folder(runs, launcher):
    ddp = runs[launcher]
    metrics = _metrics(ddp)
    assert metrics["train_samples"] == GLOBAL_BATCH
    assert metrics["hyperparameters"]["batch_size"] == GLOBAL_BATCH // WORLD
    assert json.loads((ddp / "ranks.json").read_text())["ranks"] == metrics["ranks"]
    assert (ddp / "adapter" / "adapter_model.safetensors").is_file() and (ddp / "ranks.png").is_file()
    assert not list(ddp.glob("**/*.tmp")) and not (ddp / ".adapter.tmp").exists()
    steps = [row["step"] for row in _log(ddp) if "loss" in row]
    assert steps == [1, 2, 3, 4], "one optimizer step per epoch: each step sees the whole training set"


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_ddp_gates_match_one_process(runs, launcher):
    ddp, single = runs[launcher], runs["single"]
    ranks, reference = _metrics(ddp)["ranks"], _metrics(single)["ranks"]
    assert ranks == reference
    live = sum(ranks.values())
    assert len(ranks) == MODULES and 0 < live < MODULES * R_MAX, "xi=0.3 on N(0,1) gates kills some ranks"
    tensors = load_file(ddp / "adapter" / "adapter_model.safetensors")
    expected = load_file(single / "adapter" / "adapter_model.safetensors")
    assert tensors.keys() == expected.keys()
    for name, value in expected.items():
        assert tensors[name].shape == value.shape, name
        torch.testing.assert_close(tensors[name], value, atol=1e-5, rtol=1e-3, msg=name)


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_ddp_loss_and_dev_metrics_match_one_process(runs, launcher):
    ddp, single = runs[launcher], runs["single"]
    logs = {name: _log(out) for name, out in (("ddp", ddp), ("single", single))}
    train = {name: [row for row in rows if "loss" in row] for name, rows in logs.items()}
    for got, want in zip(train["ddp"], train["single"], strict=True):
        assert got["live_ranks"] == want["live_ranks"]
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-4)
        assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-4)
    evals = {name: [row["eval_accuracy"] for row in rows if "eval_accuracy" in row] for name, rows in logs.items()}
    assert len(evals["ddp"]) == 4 and evals["ddp"] == evals["single"]
    got, want = _metrics(ddp), _metrics(single)
    assert got["eval"] == want["eval"] and got["eval_final"] == want["eval_final"]
    assert got["best_checkpoint"].rsplit("-", 1)[1] == want["best_checkpoint"].rsplit("-", 1)[1]
    assert got["nonzero_params"] == want["nonzero_params"]


def test_ddp_with_a_budget_takes_the_decisions_of_one_process(budget_runs):
    ddp, single = _metrics(budget_runs["torchrun"]), _metrics(budget_runs["single"])
    assert ddp["ranks"] == single["ranks"]
    assert ddp["nonzero_params"] == single["nonzero_params"]
    assert abs(ddp["nonzero_params"] - ddp["target_params"]) <= 0.05 * ddp["target_params"]
    assert 0 < sum(ddp["ranks"].values()) < MODULES * R_MAX
    live = {name: [row["live_ranks"] for row in _log(out) if "loss" in row] for name, out in budget_runs.items()}
    assert live["torchrun"] == live["single"], "every step kills the same ranks"
