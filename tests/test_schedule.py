"""The sparsifying scheduler (Algorithm 1 of Ding et al. 2023, SoRA): xi schedules, a real 3-stage run, resume.

The runs are tiny but real: MiniLM on 32 RTE training pairs, 2 steps per stage, gates drawn from N(0, 1) and the
authors' constant threshold (tau = xi), so every stage kills a share of the ranks.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import GLUE_DIR

import sora.schedule
from sora import SoraError, cli
from sora.model import load_safetensors
from sora.schedule import run_schedule, xi_values
from sora.train import TrainConfig, evaluate_adapter

XIS = [0.05, 0.15, 0.3]
FILES = ("run_config.json", "schedule.json", "schedule.csv", "curves.png", "train_log.jsonl")


def _config(out, **overrides) -> TrainConfig:
    return TrainConfig(
        task="rte",
        output_dir=str(out),
        data_dir=str(GLUE_DIR),
        max_train_samples=32,
        max_eval_samples=16,
        max_seq_length=32,
        batch_size=16,
        r=4,
        threshold="constant",
        gate_init="randn",
        logging_steps=1,
        **overrides,
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory, glue_dir):
    """One uninterrupted 3-stage schedule: (its config, its rows)."""
    cfg = _config(tmp_path_factory.mktemp("schedule") / "run")
    return cfg, run_schedule(cfg, XIS, 1.0)["stages"]


def _without_seconds(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


# ---------------------------------------------------------------------------------------------------------------
# the xi values


def test_linear_schedule_is_evenly_spaced():
    assert xi_values("linear", 0.1, 0.5, 5) == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    assert xi_values("linear", 0.3, 0.9, 1) == [0.3]


def test_log_linear_schedule_is_the_authors_formula():
    values = xi_values("log_linear", 0.5, 3.0, 4)
    assert values == np.log(np.linspace(np.exp(0.5), np.exp(3.0), 4)).tolist()
    assert values[0] == pytest.approx(0.5) and values[-1] == pytest.approx(3.0)
    steps = np.diff(values)
    assert (steps > 0).all() and (np.diff(steps) < 0).all(), "log of an even spacing of exp: the steps shrink"


def test_exp_linear_schedule_is_geometric():
    values = xi_values("exp_linear", 1e-4, 1e-1, 4)
    assert values == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1])
    assert all(isinstance(v, float) for v in values)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("cosine", 0.1, 0.2, 3), "unknown xi schedule 'cosine'"),
        (("linear", 0.1, None, 3), "needs its last value"),
        (("linear", 0.1, 0.2, 0), "integer >= 1"),
        (("linear", 0.1, 0.2, 2.5), "integer >= 1"),
        (("linear", -0.1, 0.2, 3), "0 <= start <= end"),
        (("linear", 0.3, 0.2, 3), "0 <= start <= end"),
        (("log_linear", 0.1, math.inf, 3), "0 <= start <= end"),
        (("linear", math.nan, 0.2, 3), "0 <= start <= end"),
        (("exp_linear", 0.0, 0.2, 3), "start must be > 0"),
        (("log_linear", 0.1, 1000.0, 3), "overflows"),
    ],
)
def test_bad_schedules_are_one_line_errors(args, message):
    with pytest.raises(SoraError, match=message) as info:
        xi_values(*args)
    assert "\n" not in str(info.value)


def test_the_schedule_is_named_by_the_kind_that_reproduces_it():
    for kind in ("linear", "log_linear", "exp_linear"):
        assert sora.schedule._schedule_name(xi_values(kind, 0.5, 3.0, 4)) == kind
    assert sora.schedule._schedule_name(XIS) == "list"


@pytest.mark.parametrize(
    ("overrides", "xis", "epochs", "message"),
    [
        ({"method": "lora"}, XIS, 1.0, "the sparsifying scheduler trains sora, not 'lora'"),
        ({}, [], 1.0, "at least one xi"),
        ({}, [0.1, -0.2], 1.0, "xi of stage 2 must be a finite number >= 0"),
        ({}, [0.1, math.nan], 1.0, "xi of stage 2"),
        ({}, XIS, 0, "epochs_per_stage must be > 0"),
        ({"load_in_4bit": True}, XIS, 1.0, "trains a full-precision base: --load-in-4bit is for sora train"),
    ],
)
def test_bad_requests_fail_before_writing_anything(tmp_path, overrides, xis, epochs, message):
    out = tmp_path / "out"
    with pytest.raises(SoraError, match=message):
        run_schedule(_config(out, **overrides), xis, epochs)
    assert not out.exists()


def test_a_falling_xi_is_allowed():
    assert sora.schedule._check_xis([0.3, 0.1, 0]) == [0.3, 0.1, 0.0]


# ---------------------------------------------------------------------------------------------------------------
# a real 3-stage run


def test_a_schedule_writes_its_files_after_every_stage(run):
    cfg, rows = run
    out = Path(cfg.output_dir)
    assert all((out / name).is_file() for name in FILES)
    schedule = json.loads((out / "schedule.json").read_text())
    assert schedule["task"] == "rte" and schedule["schedule"] == "list" and schedule["primary_metric"] == "accuracy"
    assert schedule["xis"] == XIS and schedule["epochs_per_stage"] == 1.0 and schedule["stages"] == rows
    assert [row["stage"] for row in rows] == [1, 2, 3] and [row["xi"] for row in rows] == XIS
    for stage in (1, 2, 3):
        adapter = out / "adapters" / f"stage_{stage}"
        assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "sora_task.json").is_file()
        assert (out / "state" / f"stage_{stage}" / "optimizer.safetensors").is_file()
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob("**/*.tmp"))
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert sorted({row["stage"] for row in log}) == [1, 2, 3]
    assert [row["step"] for row in log if "loss" in row] == [1, 2] * 3


def test_ranks_die_stage_by_stage_and_a_revival_is_flagged(run):
    rows = run[1]
    assert rows[0]["revived"] is False
    for before, after in zip(rows, rows[1:], strict=False):
        assert after["revived"] == (after["nonzero_params"] > before["nonzero_params"])
        assert after["nonzero_params"] <= before["nonzero_params"] or after["revived"]
    live = [row["live_ranks"] for row in rows]
    assert 36 * 4 > live[0] > live[-1] > 0, f"the xis should kill ranks between stages: {live}"
    for row in rows:  # exact counts: rank x (d_in + d_out) of every MiniLM module
        assert row["live_ranks"] == sum(row["ranks"].values())
        sizes = {name: 768 if ".attention." in name else 1920 for name in row["ranks"]}
        assert row["nonzero_params"] == sum(rank * sizes[name] for name, rank in row["ranks"].items())
        assert set(row["train"]) == set(row["dev"]) == {"accuracy"} and row["seconds"] > 0


def test_the_csv_and_the_json_agree(run):
    cfg, rows = run
    table = list(csv.DictReader(Path(cfg.output_dir, "schedule.csv").read_text().splitlines()))
    header = ["stage", "xi", "nonzero_params", "live_ranks", "train_accuracy", "dev_accuracy", "revived", "seconds"]
    assert list(table[0]) == header and len(table) == len(rows)
    for line, row in zip(table, rows, strict=True):
        assert int(line["stage"]) == row["stage"] and float(line["xi"]) == row["xi"]
        assert int(line["nonzero_params"]) == row["nonzero_params"] and int(line["live_ranks"]) == row["live_ranks"]
        assert float(line["train_accuracy"]) == row["train"]["accuracy"]
        assert float(line["dev_accuracy"]) == row["dev"]["accuracy"]
        assert line["revived"] == str(row["revived"]) and float(line["seconds"]) == row["seconds"]


def test_sora_eval_reproduces_a_stage_dev_score(run):
    cfg, rows = run
    scores = evaluate_adapter(
        f"{cfg.output_dir}/adapters/stage_3",
        data_dir=cfg.data_dir,
        batch_size=cfg.batch_size * 2,
        max_eval_samples=cfg.max_eval_samples,
        seed=cfg.seed,
    )
    assert scores == rows[2]["dev"]


@pytest.mark.parametrize(
    ("scores", "within", "stage"),
    [
        ([0.80, 0.86, 0.855, 0.84], 1.0, 3),  # the best is stage 2; stage 3 loses 0.5 point, stage 4 two
        ([0.80, 0.86, 0.855, 0.84], 0.0, 2),
        ([0.90, 0.89, 0.88, 0.87], 1.0, 2),  # exactly 1 point below counts as within, despite float rounding
        ([0.90, 0.89, 0.88, 0.87], 10.0, 4),
    ],
)
def test_the_pick_is_the_smallest_stage_within_points_of_the_best(scores, within, stage):
    rows = [{"stage": k, "nonzero_params": 1000 // k, "dev": {"f1": v}} for k, v in enumerate(scores, start=1)]
    assert sora.schedule.pick_stage({"primary_metric": "f1", "stages": rows}, within)["stage"] == stage


def test_the_pick_of_a_loss_is_within_percent_of_the_lowest():
    losses = [2.0, 1.5, 1.515, 1.6]
    rows = [{"stage": k, "nonzero_params": 1000 // k, "dev": {"loss": v}} for k, v in enumerate(losses, start=1)]
    assert sora.schedule.pick_stage({"primary_metric": "loss", "stages": rows})["stage"] == 3  # 1% above 1.5
    assert sora.schedule.pick_stage({"primary_metric": "loss", "stages": rows}, 0.5)["stage"] == 2


def test_the_pick_is_by_size_when_a_revived_stage_is_larger():
    rows = [{"stage": k, "nonzero_params": n, "dev": {"m": 0.8}} for k, n in ((1, 500), (2, 700))]
    assert sora.schedule.pick_stage({"primary_metric": "m", "stages": rows})["stage"] == 1
    with pytest.raises(SoraError, match="within must be a finite number >= 0, got -1"):
        sora.schedule.pick_stage({"primary_metric": "m", "stages": rows}, -1)


def test_sora_schedule_names_the_picked_stage_and_its_adapter(run, capsys):
    """The command's last lines (here of the finished fixture run, resumed: nothing left to train) name the stage
    ``pick_stage`` picks, its score against the best, its size and its adapter folder."""
    cfg, rows = run
    argv = ["schedule", "--task", "rte", "--output-dir", cfg.output_dir, "--data-dir", cfg.data_dir, "--resume",
            "--xi-list", ",".join(map(str, XIS)), "--max-train-samples", "32", "--max-eval-samples", "16",
            "--max-seq-length", "32", "--batch-size", "16", "--r", "4", "--threshold", "constant", "--gate-init",
            "randn", "--logging-steps", "1", "--pick-within", "100"]  # fmt: skip
    assert cli.main(argv) == 0
    line, summary = capsys.readouterr().out.strip().splitlines()[-2:]
    smallest = min(rows, key=lambda row: row["nonzero_params"])  # within 100 points: every stage
    adapter = f"{cfg.output_dir}/adapters/stage_{smallest['stage']}"
    assert json.loads(summary) == {"output_dir": cfg.output_dir, "stages": 3, "pick": smallest["stage"],
                                   "adapter": adapter}  # fmt: skip
    assert line.startswith(f"sora schedule on rte: stage {smallest['stage']} of 3 is the smallest within 100 point")
    assert f"best dev accuracy ({100 * smallest['dev']['accuracy']:.1f})" in line
    assert f"{smallest['nonzero_params']:,} adapter parameters" in line and line.endswith(adapter)
    assert cli.main([*argv[:-1], "-1"]) == 2
    error = "sora: error: --pick-within must be a finite number >= 0, got -1.0"
    assert capsys.readouterr().err.strip() == error


def test_a_finished_schedule_is_kept(run):
    cfg, rows = run
    with pytest.raises(SoraError, match="holds a run already"):
        run_schedule(cfg, XIS, 1.0)
    with pytest.raises(SoraError, match="another schedule"):
        run_schedule(cfg, XIS[:2], 1.0, resume=True)
    with pytest.raises(SoraError, match="another schedule"):
        run_schedule(cfg, XIS, 2.0, resume=True)
    assert run_schedule(cfg, XIS, 1.0, resume=True)["stages"] == rows, "nothing left to train"


# ---------------------------------------------------------------------------------------------------------------
# resume


@pytest.mark.slow
def test_an_interrupted_schedule_resumes_at_its_stage_and_ends_as_an_uninterrupted_one(run, tmp_path, monkeypatch):
    reference_cfg, reference = run
    cfg = _config(tmp_path / "run")
    pruned = []

    def crash_in_stage_3(model):  # stage 3 trains, saves its state, then the process dies
        pruned.append(model)
        if len(pruned) == 3:
            raise KeyboardInterrupt
        return real_prune(model)

    real_prune = sora.schedule.prune
    monkeypatch.setattr(sora.schedule, "prune", crash_in_stage_3)
    with pytest.raises(KeyboardInterrupt):
        run_schedule(cfg, XIS, 1.0)
    monkeypatch.undo()
    out = tmp_path / "run"
    finished = json.loads((out / "schedule.json").read_text())["stages"]
    assert [row["stage"] for row in finished] == [1, 2]
    assert len((out / "schedule.csv").read_text().splitlines()) == 3 and not (out / "adapters" / "stage_3").exists()
    assert _without_seconds(finished) == _without_seconds(reference[:2])

    rows = run_schedule(cfg, XIS, 1.0, resume=True)["stages"]
    assert rows[:2] == finished, "the finished stages are kept, not retrained"
    assert _without_seconds(rows) == _without_seconds(reference)
    for name in ("sora_model.safetensors", "optimizer.safetensors"):
        mine = load_safetensors(out / "state" / "stage_3" / name)
        theirs = load_safetensors(f"{reference_cfg.output_dir}/state/stage_3/{name}")
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine), name
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log if "loss" in row] == [1, 2] * 3, "stage 3 is logged once"
