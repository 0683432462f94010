"""benchmarks/runner.py, the resumable runner of glue.py and decoder.py, without training: a run is done once and
its result read back after, a failure is recorded with the runner's fields and retried only where failures are not
results, a run another live worker holds or the spent budget leaves alone, a dead worker's lock is taken over, the
run folder starts empty; a run that needs GLUE and has no folder is a one-line exit; the machine record holds what the
report reads. And the two runners on it: glue.py's run and decoder.py's row records."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess

import pytest
from conftest import load_benchmark

load_benchmark("build_report")  # puts benchmarks/ on sys.path, as running the script does

import decoder  # noqa: E402
import glue  # noqa: E402
import runner  # noqa: E402
from report.load import Machine  # noqa: E402


def _args(tmp_path, data_dir=None, stop_at=None, **more) -> argparse.Namespace:
    return argparse.Namespace(scratch=str(tmp_path / "scratch"), data_dir=data_dir, stop_at=stop_at, threads=1, **more)


class _Calls:
    """A run's ``work``: counts its calls, returns ``numbers`` or raises ``error``."""

    def __init__(self, numbers=None, error=None):
        self.numbers, self.error, self.calls = numbers or {"score": 1.0}, error, 0

    def __call__(self):
        self.calls += 1
        if self.error:
            raise self.error
        return self.numbers


def _job(tmp_path, work, failures_are_results=True, seen=None):
    def setup():
        if seen is not None:
            seen.append(sorted(p.name for p in out.iterdir()) if out.exists() else None)
        return runner.Run({"variant": "v", "command": "sora train ..."}, work, lambda: {"task": "t"}, str)

    out = tmp_path / "scratch" / "exp" / "run1"
    results = tmp_path / "results"
    return runner.Job("exp", "run1", results / "run1.json", results / "failed" / "run1.json", out, setup,
                      failures_are_results)  # fmt: skip


def test_a_run_is_done_once_and_read_back(tmp_path):
    work = _Calls()
    job = _job(tmp_path, work)
    first = runner.Runner(_args(tmp_path)).attempt(job)
    assert first["score"] == 1.0 and first["variant"] == "v" and first["command"] == "sora train ..."
    assert first["experiment"] == "exp" and len(first["loadavg_start"]) == len(first["loadavg_end"]) == 3
    assert {"invocation", "finished", "machine"} <= set(first)
    assert json.loads(job.result.read_text()) == first
    again = runner.Runner(_args(tmp_path))
    assert again.attempt(job) == first and work.calls == 1 and again.ran == 0
    assert not (tmp_path / "scratch" / "locks" / "exp" / "run1.lock").exists()


def test_the_run_folder_starts_empty(tmp_path):
    seen = []
    job = _job(tmp_path, _Calls(), seen=seen)
    (job.out / "checkpoints").mkdir(parents=True)
    runner.Runner(_args(tmp_path)).attempt(job)
    assert seen == [None]


@pytest.mark.parametrize("final", [True, False])
def test_a_failure_is_recorded_and_retried_only_where_it_is_not_a_result(tmp_path, final):
    work = _Calls(error=ValueError("every gate is zero"))
    job = _job(tmp_path, work, failures_are_results=final)
    worker = runner.Runner(_args(tmp_path))
    assert worker.attempt(job) == {} and worker.attempt(job) == {} and work.calls == 1  # not again this invocation
    record = json.loads(job.failed.read_text())
    assert record["task"] == "t" and record["error"] == "ValueError: every gate is zero"
    assert record["experiment"] == "exp" and record["invocation"] == worker.invocation
    assert {"loadavg_start", "finished"} <= set(record) and not job.result.exists()
    assert worker.failed == ["exp/run1: ValueError: every gate is zero"]
    runner.Runner(_args(tmp_path)).attempt(job)  # the next invocation
    assert work.calls == (1 if final else 2)


def test_a_held_run_and_the_spent_budget_leave_the_run_alone(tmp_path):
    work = _Calls()
    job = _job(tmp_path, work)
    lock = tmp_path / "scratch" / "locks" / "exp" / "run1.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(str(os.getpid()))  # a live worker
    assert runner.Runner(_args(tmp_path)).attempt(job) is None and lock.exists()
    lock.unlink()
    spent = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    assert runner.Runner(_args(tmp_path, stop_at=spent)).attempt(job) is None and work.calls == 0
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock.write_text(str(dead.pid))  # a finished worker's
    assert runner.Runner(_args(tmp_path)).attempt(job)["score"] == 1.0 and not lock.exists()


def test_a_run_without_a_glue_folder_is_one_line(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match=r"^no GLUE folder: pass --data-dir DIR \(the GLUE TSVs\) or set GLUE_DIR$"):
        runner.require_glue_dir(None)
    monkeypatch.setenv("GLUE_DIR", "/data/glue")
    parser = argparse.ArgumentParser()
    runner.add_data_option(parser)
    assert parser.parse_args([]).data_dir == "/data/glue"
    monkeypatch.delenv("GLUE_DIR")
    parser = argparse.ArgumentParser()
    runner.add_data_option(parser)
    assert parser.parse_args([]).data_dir is None


def test_the_machine_record_holds_what_the_report_reads():
    record = runner.machine()
    assert set(Machine._fields) <= set(record) and record["cpu"] == runner.cpu_model() != ""


# --- the two runners on it ------------------------------------------------------------------------------------------


def test_glue_asks_for_the_data_only_when_a_run_trains(tmp_path, monkeypatch):
    monkeypatch.setattr(glue, "RESULTS", tmp_path / "results")
    worker = glue.Runner(_args(tmp_path))
    with pytest.raises(SystemExit, match="^no GLUE folder"):
        worker.run("defaults", "rte", "lora", 0, common={})
    assert not list((tmp_path / "scratch" / "locks").rglob("*.lock"))
    done = {"eval": {"accuracy": 0.5}}
    glue.result_path("defaults", glue.run_name("rte", "lora", glue.RANK, 0)).parent.mkdir(parents=True)
    glue.result_path("defaults", glue.run_name("rte", "lora", glue.RANK, 0)).write_text(json.dumps(done))
    assert worker.run("defaults", "rte", "lora", 0, common={}) == done


def test_a_decoder_row_records_its_fields_and_a_failure(tmp_path, monkeypatch):
    worker = decoder.Runner(_args(tmp_path, results=str(tmp_path / "decoder"), records=[4, 2, 3], front=False))
    worker.summary = {"records": "the data"}
    monkeypatch.setattr(worker, "zero_shot", lambda: {"tasks": {"sst2": {"loss": 1.0}}})
    assert worker.run_row(decoder.ZERO_SHOT, None)
    result = json.loads((tmp_path / "decoder" / "zero-shot.json").read_text())
    assert result["tasks"] == {"sst2": {"loss": 1.0}} and result["command"] is None and result["seed"] is None
    assert (result["variant"], result["experiment"], result["runner"]) == ("zero-shot", "decoder", decoder.RUNNER)
    assert result["data"] == {"records": "the data"} and "machine" in result

    def fail(cfg):
        raise RuntimeError(f"no data at {cfg.train_file}")

    monkeypatch.setattr(worker, "tuned", fail)
    assert worker.run_row("lora", 0)  # a failure is a result here
    record = json.loads((tmp_path / "decoder" / "failed" / "lora_seed0.json").read_text())
    assert record["error"].startswith("RuntimeError: no data at ") and record["variant"] == "lora"
    assert record["command"].startswith("OMP_NUM_THREADS=1 sora train --task causal-lm --method lora --output-dir ")
    assert record["command"].endswith(" --epochs 1 --batch-size 8 --max-seq-length 192 --seed 0")
    assert not (tmp_path / "decoder" / "lora_seed0.json").exists()


def test_a_schedule_run_records_its_command_and_each_stage_s_scores_once(tmp_path, glue_dir):
    """runner's schedule run (glue.py's and decoder.py's front): a real 2-stage `sora schedule --target-list` on 32
    RTE pairs; the result is schedule.json with the `sora schedule` command that reproduces it, the caller's fields
    and per stage what ``score_stage`` gave for its adapter; the curves land beside it; a second call trains nothing."""
    from sora.train import TrainConfig

    worker = runner.Runner(_args(tmp_path, data_dir=str(glue_dir)))
    sizes = {"max_train_samples": 32, "max_eval_samples": 16, "max_seq_length": 32, "batch_size": 16}
    cfg = TrainConfig("rte", str(tmp_path / "scratch" / "s"), data_dir=str(glue_dir), seed=0, gate_init=1.0, **sizes)
    result = tmp_path / "results" / "rte_s.json"
    scored = []

    def score_stage(adapter):
        scored.append(adapter.name)
        return {"adapter_files": sorted(p.name for p in adapter.glob("adapter_*"))}

    args = ("front", "rte_s", result, cfg, [0.5, 0.5], 1.0, " --target-list 0.75,0.25", {"runner": "me"}, [0.75, 0.25])
    assert worker.schedule_run(*args, score_stage=score_stage)
    record = json.loads(result.read_text())
    assert record["command"] == (
        f"OMP_NUM_THREADS=1 sora schedule --task rte --method sora --output-dir {cfg.output_dir} --data-dir {glue_dir} "
        "--gate-init 1 --batch-size 16 --max-seq-length 32 --seed 0 --max-train-samples 32 --max-eval-samples 16 "
        "--target-list 0.75,0.25 --epochs-per-stage 1"
    )
    assert record["runner"] == "me" and record["targets"] == [0.75, 0.25] and record["error"] is None
    assert scored == ["stage_1", "stage_2"]
    assert [s["adapter_files"] for s in record["stages"]] == [["adapter_config.json", "adapter_model.safetensors"]] * 2
    assert result.with_name("rte_s_curves.png").is_file()
    assert worker.schedule_run(*args, score_stage=score_stage) and scored == ["stage_1", "stage_2"] and worker.ran == 1


def test_the_decoder_front_schedules_at_glue_s_sizes_a_third_of_a_row_per_stage(tmp_path):
    worker = decoder.Runner(_args(tmp_path, results=str(tmp_path / "decoder"), records=[4, 2, 3], front=False))
    cfg = worker.config(decoder.SCHEDULE, 1, tmp_path / "s")
    assert (cfg.method, cfg.task, cfg.seed, cfg.gate_init) == ("sora", "causal-lm", 1, glue.LEARNED["gate_init"])
    assert decoder.FRONT_EPOCHS_PER_STAGE * 3 == decoder.RECIPE["epochs"] == cfg.epochs
    assert [worker.config(label, 0, tmp_path).r for label in decoder.FRONT_ROWS] == [2, 1]
