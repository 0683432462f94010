"""Sharded SoRA (FSDP2, ``sora train --fsdp``) on CPU (gloo), 2 processes under torchrun, against one process.

The set-up of ``test_distributed.py``: a training set that is exactly one global batch (8 examples: 2 processes x 4
per device, or 1 process x 8), the embedded MiniLM with dropout 0, random gates and ``--xi 0.3 --threshold
constant``, so ranks die during the 4 steps. Every parameter (A, B, each module's gate, the head, the frozen
backbone) is a DTensor shard there; the sharded run must match one process as DDP does:

* the live ranks of every module, exactly; the pruned adapter within ``atol=1e-5, rtol=1e-3``;
* the logged loss, gradient norm and live ranks of every step; the dev accuracy of every epoch and of the kept
  checkpoint (``--fsdp`` gathers the adapter for each checkpoint, and loads the best one back into the shards).

A sharded run killed (SIGKILL to torchrun and its workers) after its second checkpoint and resumed with ``--resume``
ends bit-for-bit as the uninterrupted sharded run: its checkpoints hold the whole adapter and optimizer state,
which the resumed run cuts into shards again. ``sora schedule`` runs in one process only: FSDP there is one line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import llama, word_tokenizer
from safetensors.torch import load_file
from test_distributed import COMMON, GLOBAL_BATCH, MODULES, R_MAX, WORLD, XI
from test_faults import _assert_same_run, _complete

from sora import cli

TIMEOUT = 300


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _sharded(options: list[str], out: Path) -> list[str]:
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD)]
    per_device = ["--batch-size", str(GLOBAL_BATCH // WORLD), "--fsdp", "--output-dir", str(out)]
    return [*torchrun, "-m", "sora", "train", *options, *per_device]


def _run(command: list[str], cwd: Path) -> None:
    result = subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def options(glue_dir, dropout_free_minilm) -> list[str]:
    return [*COMMON, *XI, "--data-dir", str(glue_dir), "--model", str(dropout_free_minilm)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, options) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("fsdp")
    folders = {"fsdp": base / "fsdp", "single": base / "single"}
    _run(_sharded(options, folders["fsdp"]), base)
    single = ["--batch-size", str(GLOBAL_BATCH), "--output-dir", str(folders["single"])]
    _run([sys.executable, "-m", "sora", "train", *options, *single], base)
    return folders


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_fsdp_writes_a_one_process_run_folder(runs):
    out = runs["fsdp"]
    names = {p.name for p in out.iterdir()}
    assert names == {p.name for p in runs["single"].iterdir()}
    checkpoint = sorted((out / "checkpoints").iterdir())[-1]
    assert (checkpoint / "adapter_model.safetensors").is_file() and (checkpoint / "optimizer.pt").is_file()
    assert not list(out.glob("**/*fsdp*")), "the checkpoints are in the one-process format, not accelerate's"
    assert json.loads((out / "run_config.json").read_text())["fsdp"] is True
    assert [row["step"] for row in _log(out) if "loss" in row] == [1, 2, 3, 4]


@pytest.mark.slow
def test_fsdp_gates_and_adapter_match_one_process(runs):
    sharded, single = _metrics(runs["fsdp"]), _metrics(runs["single"])
    assert sharded["ranks"] == single["ranks"]
    live = sum(sharded["ranks"].values())
    assert len(sharded["ranks"]) == MODULES and 0 < live < MODULES * R_MAX, "xi=0.3 on N(0,1) gates kills some ranks"
    assert sharded["nonzero_params"] == single["nonzero_params"]
    assert sharded["allocation"] == single["allocation"]
    tensors, expected = (load_file(runs[k] / "adapter" / "adapter_model.safetensors") for k in ("fsdp", "single"))
    assert tensors.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(tensors[name], value, atol=1e-5, rtol=1e-3, msg=name)


@pytest.mark.slow
def test_fsdp_loss_and_dev_metrics_match_one_process(runs):
    logs = {name: _log(out) for name, out in runs.items()}
    train = {name: [row for row in rows if "loss" in row] for name, rows in logs.items()}
    for got, want in zip(train["fsdp"], train["single"], strict=True):
        assert got["live_ranks"] == want["live_ranks"] and got["nonzero_params"] == want["nonzero_params"]
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-4)
        assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-4)
    evals = {name: [row["eval_accuracy"] for row in rows if "eval_accuracy" in row] for name, rows in logs.items()}
    assert len(evals["fsdp"]) == 4 and evals["fsdp"] == evals["single"]
    got, want = _metrics(runs["fsdp"]), _metrics(runs["single"])
    assert got["eval"] == want["eval"] and got["eval_final"] == want["eval_final"]
    assert got["best_checkpoint"].rsplit("-", 1)[1] == want["best_checkpoint"].rsplit("-", 1)[1]


@pytest.mark.slow
def test_fsdp_trains_a_decoder_as_one_process_does(tmp_path):
    """`--task causal-lm --fsdp` on a tiny random Llama (the decoder layers are the FSDP2 units): 8 chat records, one
    global batch a step, 4 steps, ranks dying. Live ranks, adapter, per-step loss and dev loss as one process's."""
    llama(seed=1, initializer_range=0.2).save_pretrained(tmp_path / "model")
    word_tokenizer().save_pretrained(tmp_path / "model")
    words = ["a b c", "d e f", "b a d", "c c e"] * 2  # one global batch
    chat = [[{"role": "user", "content": f"say {w}"}, {"role": "assistant", "content": w}] for w in words]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"messages": m}) + "\n" for m in chat), encoding="utf-8")
    options = ["--task", "causal-lm", "--model", str(tmp_path / "model"), "--train-file", str(train),
               "--validation-file", str(train), "--epochs", "4", "--lr", "1e-2", "--logging-steps", "1",
               *XI]  # fmt: skip
    _run(_sharded(options, tmp_path / "fsdp"), tmp_path)
    _run([sys.executable, "-m", "sora", "train", *options, "--batch-size", str(GLOBAL_BATCH), "--output-dir",
          str(tmp_path / "single")], tmp_path)  # fmt: skip
    sharded, single = _metrics(tmp_path / "fsdp"), _metrics(tmp_path / "single")
    assert sharded["ranks"] == single["ranks"] and 0 < sum(sharded["ranks"].values()) < R_MAX * len(sharded["ranks"])
    assert sharded["eval"]["loss"] == pytest.approx(single["eval"]["loss"], rel=1e-5)
    tensors, expected = (load_file(tmp_path / k / "adapter" / "adapter_model.safetensors") for k in ("fsdp", "single"))
    assert tensors.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(tensors[name], value, atol=1e-5, rtol=1e-3, msg=name)
    losses = [[row["loss"] for row in _log(tmp_path / k) if "loss" in row] for k in ("fsdp", "single")]
    assert len(losses[0]) == 4 and losses[0] == pytest.approx(losses[1], rel=1e-4)


@pytest.mark.slow
def test_fsdp_sigkill_then_resume_equals_the_uninterrupted_sharded_run(runs, options, tmp_path):
    """SIGKILL torchrun and both workers once checkpoint-2 (of 4) is complete, then ``--resume``: the metrics, the
    adapter tensors and every log row equal the uninterrupted sharded run's bit for bit."""
    out = tmp_path / "resumed"
    checkpoint = out / "checkpoints" / "checkpoint-2"
    proc = subprocess.Popen(
        _sharded(options, out),
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the kill reaches torchrun's workers too
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while not _complete(checkpoint):
            assert proc.poll() is None, f"the run exited ({proc.returncode}) before checkpoint-2 existed"
            assert time.monotonic() < deadline, f"no checkpoint-2 after {TIMEOUT} s"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not (out / "metrics.json").exists(), "the run finished before it was killed"
    _run([*_sharded(options, out), "--resume"], tmp_path)
    _assert_same_run(out, runs["fsdp"])


@pytest.mark.parametrize("launch", ["flag", "accelerate"])
def test_fsdp_with_sora_schedule_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, launch):
    out = tmp_path / "schedule"
    argv = ["schedule", "--task", "rte", "--output-dir", str(out), "--xi-max", "1"]
    if launch == "flag":
        argv.append("--fsdp")
    else:  # what accelerate launch --use_fsdp sets
        monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == "sora: error: the sparsifying scheduler runs in one process only: FSDP (--fsdp) is for sora train"
    assert not out.exists()


def test_fsdp_in_one_process_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "train"
    assert cli.main(["train", "--task", "rte", "--output-dir", str(out), "--fsdp"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sora: error: --fsdp shards the parameters over several processes")
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "env", "message"),
    [
        ([], {"ACCELERATE_USE_FSDP": "true"}, "sora train shards with its own --fsdp: launch with torchrun"),
        (["--fsdp", "--method", "adalora"], {"WORLD_SIZE": "2"}, "--fsdp trains --method sora or lora, not 'adalora'"),
        (["--fsdp", "--target-ratio", "0.5"], {"WORLD_SIZE": "2"}, "--target-ratio / --target-params do not run"),
        (
            [],
            {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"},
            "DeepSpeed ZeRO-3 does not run sora train",
        ),
        (
            [],
            {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"},
            "DeepSpeed ZeRO-2 does not run sora train",
        ),
    ],
)
def test_fsdp_settings_it_cannot_run_are_one_line_and_write_nothing(tmp_path, monkeypatch, capsys, extra, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "train"
    assert cli.main(["train", "--task", "rte", "--output-dir", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"sora: error: {message}"), err
    assert not out.exists()


@pytest.mark.parametrize("stage", [2, 3])
def test_a_deepspeed_config_file_with_zero_2_or_3_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, stage):
    config = tmp_path / "ds_config.json"  # what accelerate launch --deepspeed_config_file points at
    config.write_text(json.dumps({"zero_optimization": {"stage": stage}, "train_micro_batch_size_per_gpu": "auto"}))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.delenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", raising=False)
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(config))
    out = tmp_path / "train"
    assert cli.main(["train", "--task", "rte", "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"sora: error: DeepSpeed ZeRO-{stage} does not run sora train"), err
    assert err[0].endswith("shard with --fsdp") and not out.exists()
