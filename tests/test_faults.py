"""Faults: a SIGKILL and ``--resume``, a kill during a checkpoint save, a diverging loss, and no unpickling in src/.

The trainings run as real ``python -m sora`` processes with one intra-op thread (``OMP_NUM_THREADS=1``): every run
of a comparison uses the same thread count, so CPU results are bit-for-bit reproducible, and it keeps these runs
fast on a shared machine.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sora import cli
from sora.optim import SoraOptimizer
from sora.run_folder import last_complete_checkpoint

SRC = Path(__file__).resolve().parents[1] / "src"
# 48 RTE pairs, batch 8, 2 epochs: 12 steps; a checkpoint and an evaluation every 2 steps.
TINY = [
    "--task", "rte", "--max-train-samples", "48", "--max-eval-samples", "16", "--max-seq-length", "32",
    "--batch-size", "8", "--r", "4", "--epochs", "2", "--save-steps", "2", "--eval-steps", "2", "--logging-steps", "1",
]  # fmt: skip
# Random gates and a constant threshold: gates die during training, so the ranks change from step to step and a
# resumed run that lost the gates, the optimizer state or the data order would end with other ranks and tensors.
SPARSE = ["--xi", "0.3", "--threshold", "constant", "--gate-init", "randn"]
TIMING = ("runtime", "per_second", "total_flos")  # wall-clock fields of the Trainer's log rows
# The Trainer's closing row reports ``train_loss``, the mean loss of the steps run by *this* process
# (``Trainer._finalize_training``): after a resume it averages fewer steps by design, so it is left out.
PER_PROCESS = ("train_loss",)
TIMEOUT = 600


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


def _command(out: Path, glue_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sora", "train", *TINY, "--data-dir", str(glue_dir), "--output-dir", str(out), *extra]


def _train(out: Path, glue_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        _command(out, glue_dir, *extra), capture_output=True, text=True, env=_env(), timeout=TIMEOUT, check=False
    )


def _kill_after_checkpoint(out: Path, glue_dir: Path, step: int, *extra: str) -> None:
    """Start a run, SIGKILL it once ``checkpoint-<step>`` is complete, and check it died before finishing."""
    checkpoint = out / "checkpoints" / f"checkpoint-{step}"
    proc = subprocess.Popen(
        _command(out, glue_dir, *extra), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env()
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while not _complete(checkpoint):
            assert proc.poll() is None, f"the run exited ({proc.returncode}) before checkpoint-{step} existed"
            assert time.monotonic() < deadline, f"no checkpoint-{step} after {TIMEOUT} s"
            time.sleep(0.02)  # polling interval for a file another process writes
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it was killed"
    assert not (out / "metrics.json").exists() and not (out / "adapter").exists()


def _comparable_log(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in PER_PROCESS and not any(t in k for t in TIMING)} for row in rows]


def _assert_same_run(resumed: Path, reference: Path) -> None:
    """Equal bit-for-bit: the reported numbers, every exported adapter tensor and the whole training log (less
    wall-clock fields and the per-process ``train_loss`` summary)."""
    got, want = (json.loads((d / "metrics.json").read_text()) for d in (resumed, reference))
    for key in ("eval", "eval_final", "ranks", "nonzero_params", "trainable_params", "train_samples"):
        assert got[key] == want[key], key
    got_t, want_t = (load_file(d / "adapter" / "adapter_model.safetensors") for d in (resumed, reference))
    assert got_t.keys() == want_t.keys()
    for name in want_t:
        assert torch.equal(got_t[name], want_t[name]), name
    assert _comparable_log(resumed) == _comparable_log(reference)


def _complete(folder: Path) -> bool:
    """The Trainer writes ``trainer_state.json`` last: a checkpoint whose trainer state parses is complete."""
    try:
        json.loads((folder / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return True


@pytest.fixture(scope="module")
def reference(tmp_path_factory, glue_dir) -> Path:
    """The uninterrupted run every resumed run must reproduce."""
    out = tmp_path_factory.mktemp("faults") / "reference"
    result = _train(out, glue_dir, *SPARSE)
    assert result.returncode == 0, result.stderr[-2000:]
    ranks = json.loads((out / "metrics.json").read_text())["ranks"]
    assert 0 < sum(ranks.values()) < 36 * 4, "the reference run should have pruned some ranks"
    return out


@pytest.mark.slow
def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, glue_dir, reference):
    """SIGKILL mid-epoch (after checkpoint-4 of 12 steps), then ``--resume`` in the same folder: the final metrics,
    the adapter tensors and every loss / grad-norm / learning-rate / live-rank log row equal the uninterrupted run's
    bit-for-bit, so the gates, A, B, the head, the optimizer and scheduler state, the RNG state and the data order
    (length-grouped sampler, skipped batches, the next epoch's shuffle) are all restored."""
    out = tmp_path / "run"
    _kill_after_checkpoint(out, glue_dir, 4, *SPARSE)
    result = _train(out, glue_dir, *SPARSE, "--resume")
    assert result.returncode == 0, result.stderr[-2000:]
    _assert_same_run(out, reference)


@pytest.mark.slow
def test_resume_skips_checkpoints_left_half_written_by_a_kill(tmp_path, glue_dir, reference):
    """A kill during a save leaves a newest ``checkpoint-N`` without ``trainer_state.json`` (written last) or with
    truncated weights. ``--resume`` must take the newest complete checkpoint, delete the broken ones, and still end
    exactly where the uninterrupted run ends."""
    out = tmp_path / "run"
    _kill_after_checkpoint(out, glue_dir, 6, *SPARSE)
    checkpoints = out / "checkpoints"
    steps = sorted(int(p.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*") if _complete(p))
    good = checkpoints / f"checkpoint-{steps[-1]}"
    no_state = checkpoints / f"checkpoint-{steps[-1] + 2}"  # killed before its trainer state was written
    truncated = checkpoints / f"checkpoint-{steps[-1] + 4}"  # weights cut short
    for broken in (no_state, truncated):
        shutil.rmtree(broken, ignore_errors=True)  # a real partial save of that step, if the kill caught one
        shutil.copytree(good, broken)
    (no_state / "trainer_state.json").unlink()
    weights = truncated / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert last_complete_checkpoint(checkpoints) == str(good)

    result = _train(out, glue_dir, *SPARSE, "--resume")
    assert result.returncode == 0, result.stderr[-2000:]
    _assert_same_run(out, reference)
    left = list(checkpoints.glob("checkpoint-*"))
    assert left and all(_complete(p) for p in left), "a broken checkpoint survived the resumed run"
    if truncated.exists():  # a step the run reached again: the Trainer wrote it anew
        load_file(truncated / "adapter_model.safetensors")


@pytest.mark.slow
def test_last_complete_checkpoint_ignores_and_removes_broken_folders(tmp_path, reference):
    """Unit check of the selection: a missing or corrupt trainer state, truncated weights or no optimizer make a
    folder incomplete; the newest complete one is chosen; only ``remove_incomplete`` deletes, and only broken ones."""
    source = next(p for p in (reference / "checkpoints").glob("checkpoint-*") if _complete(p))
    ckpts = tmp_path / "checkpoints"
    for step in (2, 4, 6, 8, 10, 12):
        shutil.copytree(source, ckpts / f"checkpoint-{step}")
    (ckpts / "checkpoint-12" / "trainer_state.json").unlink()
    (ckpts / "checkpoint-10" / "trainer_state.json").write_text('{"global_step": 1')  # killed mid-write
    weights = ckpts / "checkpoint-8" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    (ckpts / "checkpoint-6" / "optimizer.pt").unlink()
    (ckpts / "checkpoint-40").mkdir()  # an empty folder: the first moment of a save
    (ckpts / "notes-99").mkdir()  # not a checkpoint at all

    assert last_complete_checkpoint(ckpts) == str(ckpts / "checkpoint-4")
    assert len(list(ckpts.iterdir())) == 8, "without remove_incomplete nothing is deleted"
    assert last_complete_checkpoint(ckpts, remove_incomplete=True) == str(ckpts / "checkpoint-4")
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-2", "checkpoint-4", "notes-99"]
    assert last_complete_checkpoint(tmp_path / "absent") is None
    assert last_complete_checkpoint(tmp_path / "absent", remove_incomplete=True) is None


@pytest.mark.slow
@pytest.mark.parametrize(
    "diverge",
    [
        pytest.param(["--method", "sora", "--gate-lr", "1e30"], id="sora-gate-lr"),
        pytest.param(["--method", "full", "--lr", "1e6"], id="full-lr"),
    ],
)
def test_a_diverging_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path, glue_dir, diverge):
    """A learning rate far too large makes the loss NaN within a few steps: exit 2, one ``sora: error:`` line naming
    the step and the last good checkpoint, no metrics.json or adapter, and that checkpoint complete and finite."""
    out = tmp_path / "run"
    result = _train(out, glue_dir, *diverge)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in re.split(r"[\r\n]", result.stderr) if "sora: error:" in line]
    assert len(errors) == 1, errors
    match = re.search(
        r"loss is (nan|inf|-inf) at step (\d+): training stopped; the last good checkpoint is (\S+)$", errors[0]
    )
    assert match, errors[0]
    step, named = int(match.group(2)), Path(match.group(3))
    assert 2 < step <= 12
    assert named == out / "checkpoints" / f"checkpoint-{(step - 1) // 2 * 2}"  # the newest save before the step
    assert not (out / "metrics.json").exists() and not (out / "adapter").exists()
    assert _complete(named)
    weights = next(named.glob("*.safetensors"))
    assert all(torch.isfinite(t).all() for t in load_file(weights).values())


def test_a_gate_that_becomes_nan_stops_with_one_line(tmp_path, glue_dir, monkeypatch, capsys):
    """A gate that turns NaN in an optimizer step while the loss is still finite (injected after the real step 3)
    stops the run before the next step: exit 2, one ``sora: error:`` line naming the step and the last good
    checkpoint, no metrics.json or adapter."""
    real_step, calls = SoraOptimizer.step, []

    def step_then_poison(self, *args, **kwargs):
        loss = real_step(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            self.param_groups[-1]["params"][0].data[0] = float("nan")  # the gate group is the last one
        return loss

    monkeypatch.setattr(SoraOptimizer, "step", step_then_poison)
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--data-dir", str(glue_dir), "--output-dir", str(out)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "sora: error:" in line]
    assert len(errors) == 1, errors
    assert re.search(r"a SoRA gate became NaN/Inf at step 3: training stopped; the last good checkpoint is \S+"
                     r"checkpoint-2$", errors[0]), errors[0]  # fmt: skip
    assert len(calls) == 3
    assert not (out / "metrics.json").exists() and not (out / "adapter").exists()


# ---------------------------------------------------------------------------------------------------------------
# no unpickling


UNPICKLERS = {"pickle", "cPickle", "_pickle", "joblib", "dill", "cloudpickle", "shelve"}


def _unsafe_loads(source: str, filename: str = "<src>") -> list[str]:
    """Every ``torch.load`` without ``weights_only=True`` and every import of a pickle library in ``source``."""
    problems = []
    tree = ast.parse(source, filename)
    checked = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            problems += [
                f"{filename}:{node.lineno}: import {a.name}" for a in node.names if a.name.split(".")[0] in UNPICKLERS
            ]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in UNPICKLERS:
                problems.append(f"{filename}:{node.lineno}: from {node.module} import")
            if node.module.split(".")[0] == "torch" and any(a.name == "load" for a in node.names):
                problems.append(f"{filename}:{node.lineno}: from torch import load")
        elif isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
            safe = any(
                k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                for k in node.keywords
            )
            checked += safe
            if not safe:
                problems.append(f"{filename}:{node.lineno}: torch.load without weights_only=True")
    # a torch.load that is not a direct call (an alias, a getattr) cannot be checked: refuse it
    if len(re.findall(r"\btorch\s*\.\s*load\b", source)) != checked + sum("torch.load without" in p for p in problems):
        problems.append(f"{filename}: torch.load used other than as a direct call")
    return problems


def test_the_checker_finds_unsafe_loads():
    bad = (
        "import pickle\nfrom joblib import load\nimport torch\n"
        "f = torch.load\ntorch.load('x')\ntorch.load('x', weights_only=False)\n"
    )
    found = _unsafe_loads(bad)
    assert len(found) == 5, found
    assert _unsafe_loads("import torch\nsd = torch.load('x', map_location='cpu', weights_only=True)\n") == []


def test_src_never_unpickles():
    """Every ``torch.load`` in src/ passes ``weights_only=True`` and no pickle library is imported anywhere in src/."""
    files = sorted(SRC.rglob("*.py"))
    assert files
    problems = [p for f in files for p in _unsafe_loads(f.read_text(encoding="utf-8"), str(f.relative_to(SRC)))]
    assert problems == []
