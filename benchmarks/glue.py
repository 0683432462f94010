"""GLUE experiments of the SoRA paper (Ding et al. 2023) at CPU scale, on the embedded MiniLM-L6: a resumable runner.

One run is one ``sora train`` (called in-process: ``sora.train.train``) and one result file
``benchmarks/results/glue/<experiment>/<task>_<method>_r<r>_seed<seed>[_trial<k>].json``: the run's ``metrics.json``
plus ``command``, the exact ``sora train`` command line that reproduces it. A run whose JSON exists is skipped, so an
interrupted invocation is continued by running the same command again. Run folders (checkpoints, adapters) go to a
scratch folder outside the repository (``--scratch``, default ``/tmp/sora-bench``); only the JSON results are kept.
Several invocations may run at once (e.g. two single-threaded workers on a 2-core machine): each run is claimed
with a lock file in the scratch folder, so no run is done twice (``benchmarks/runner.py``, shared with
``benchmarks/decoder.py``). The GLUE TSVs are read from ``--data-dir``, default ``$GLUE_DIR``.

Experiments (``python benchmarks/glue.py EXPERIMENT [...]``; ``all`` runs them in order of value):

- ``xigrid``: SoRA gate settings (threshold rule, xi, gate init, gate lr) on MRPC at the Table 1 size, plus LoRA;
- ``hpsearch``: the learning-rate search, the same budget for every method: ``LR_TRIALS`` on ``HP_TASK``, seed 0;
- ``table1``: 5 tasks x 5 methods at the best learning rate of each method (``--seeds``);
- ``table2``: SoRA r_max vs LoRA r in ``RANKS`` on ``TABLE2_TASKS`` (seed 0);
- ``speed``: Table 4, seconds per epoch of LoRA, AdaLoRA and SoRA, interleaved run by run in one invocation;
- ``schedule``: the sparsifying scheduler (Figure 3) on ``SCHEDULE_TASKS``;
- ``long``: Table 1 in longer runs (the whole train splits but SST-2's, ``LONG_SAMPLES``), where the tasks are
  learned, SoRA at the ``sora train`` defaults and every method at its default learning rate.
- ``head``: the longer runs that stayed at chance with the pooler frozen, again with the pooler trained;
- ``lrsearch``: learning-rate searches of full fine-tuning (the bars), AdaLoRA and EVA (``LR_SEARCH``);
- ``epochs``: longer runs of a method that stays below a bar (``EPOCH_RUNS``);
- ``defaults``: the Defaults table, ``sora train`` with task and data flags only (``DEFAULTS_SAMPLES``);
- ``equal``: the Equal-budget table, SoRA at a sparsity budget against LoRA and AdaLoRA of that size (``EQUAL_BUDGET``).
- ``allocation``: who chooses the surviving ranks, the gates' initialisation or the data (``ALLOCATION``): SoRA
  variants at a budget, each with two gate seeds and the same data order, on ``ALLOCATION_TASK``.
- ``front``: the size-accuracy front of one ``sora schedule --target-list`` run against the LoRA rank sweep, AdaLoRA,
  SoRA single budgets and EVA at the same sizes (``FRONT_*``), at the Defaults recipe.

``--stop-at HH:MM`` (UTC) launches no new run after that time. ``benchmarks/build_report.py`` turns the results into
``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import runner  # the shared runner: run claims, records, the machine, the command line

ROOT = Path(__file__).resolve().parents[1]
# A GPU session writes its results apart (benchmarks/gpu_defaults.sh) and loads the model from a carried folder.
RESULTS = Path(os.environ.get("SORA_BENCH_RESULTS", ROOT / "benchmarks" / "results" / "glue"))
MODEL = os.environ.get("SORA_DEVICE_MODEL")  # None: the embedded MiniLM
DEFAULT_SCRATCH = "/tmp/sora-bench"

TASKS = ("cola", "sst2", "mrpc", "stsb", "rte")
# "sora" trains with the benchmark's gate settings (SORA_SETTINGS_FILE), "sora-default" with the `sora train` defaults
# (TrainConfig's xi, threshold, gate init and update); both are method "sora" of `sora train`.
METHODS = ("full", "bitfit", "lora", "adalora", "sora", "sora-default")
# Training subsets (the first seeded sample of the train split; dev sets are always complete). Sized so that the
# whole Table 1 fits a 2-core CPU shared with other jobs: short-sentence tasks get more samples.
TRAIN_SAMPLES = {"cola": 1024, "sst2": 1024, "mrpc": 512, "stsb": 512, "rte": 512}
NEVER = 1_000_000  # eval/save steps beyond the run: no per-epoch dev evaluation, the final model is scored
COMMON: dict[str, Any] = {
    "epochs": 2.0,
    "batch_size": 16,
    "max_seq_length": 64,
    "eval_steps": NEVER,
    "save_steps": NEVER,
    "logging_steps": 4,
}
RANK = 8
SEEDS = (0, 1, 2)  # the seeds of every table with a seed spread

# The learning-rate search: 2 trials per method, on one task, seed 0; the best dev score wins (ties: the first).
HP_TASK = "sst2"
# Runs are short (64-128 steps), so the trials sit above the usual long-run GLUE rates.
LR_TRIALS = {
    "full": (5e-5, 2e-4),
    "bitfit": (2e-3, 1e-2),
    "lora": (1e-3, 4e-3),
    "adalora": (1e-3, 4e-3),
    "sora": (1e-3, 4e-3),
    "sora-default": (1e-3, 4e-3),
}

# SoRA's gate settings for hpsearch, Table 1/2/4 and the schedule: chosen from the xigrid results and written,
# with the reason, to this file (see BENCHMARKS.md, "what was tried"); SoRA runs wait until it exists.
SORA_SETTINGS_FILE = RESULTS / "sora_settings.json"

# The xi investigation: MRPC at the Table 1 size, seed 0, lr 1e-3; LoRA as the reference.
XIGRID_TASK = "mrpc"
XIGRID: list[tuple[str, dict[str, Any]]] = [
    ("lora", {}),
    ("sora", {"threshold": "paper", "gate_update": "adamw", "gate_init": 1.0, "xi": 1e-4}),  # the old defaults
    ("sora", {"threshold": "constant", "gate_update": "adamw", "gate_init": "randn", "xi": 3e-3}),
    ("sora", {"threshold": "constant", "gate_update": "adamw", "gate_init": "randn", "xi": 1e-2}),
    ("sora", {"threshold": "constant", "gate_update": "adamw", "gate_init": 1.0, "xi": 2e-2}),
    ("sora", {"threshold": "constant", "gate_update": "adamw", "gate_init": 1.0, "xi": 4e-2, "gate_lr": 0.1}),
    ("sora", {"threshold": "paper", "gate_update": "sgd", "gate_init": 1.0, "xi": 20.0}),
    ("sora", {"threshold": "constant", "gate_update": "adamw", "gate_init": "randn", "xi": 1e-2, "gate_lr": 1e-2}),
    ("sora", {"threshold": "constant", "gate_update": "adamw", "gate_init": "randn", "xi": 5e-3}),
    # the values of the authors' GLUE script (sparse_lambda 10, sparse_lambda_2 3e-4), read as gate lr and xi
    ("sora", {"threshold": "constant", "gate_update": "adamw", "gate_init": "randn", "xi": 3e-4, "gate_lr": 10.0}),
    # the paper's threshold tau = xi * lr_t at the xi of the `sora train` default (0.5), below and above it
    ("sora", {"threshold": "paper", "gate_update": "adamw", "gate_init": "randn", "xi": 0.25}),
    ("sora", {"threshold": "paper", "gate_update": "adamw", "gate_init": "randn", "xi": 0.5}),
    ("sora", {"threshold": "paper", "gate_update": "adamw", "gate_init": "randn", "xi": 0.9}),
]

TABLE2_TASKS = ("mrpc", "sst2")  # SST-2 added last: the one task every method learns here
RANKS = (1, 2, 4, 8, 16)
SPEED_TASK = "mrpc"
SPEED_METHODS = ("lora", "adalora", "sora")
SPEED_ROUNDS = 6
SPEED_EVAL_SAMPLES = 32  # the speed runs time training steps only; their dev score is not used
SCHEDULE_TASKS = ("mrpc", "cola", "sst2")  # SST-2 added last: the task that learns
# SST-2 again at lr 1e-3 (the schedule keeps the rate constant after warmup; at Table 1's 4e-3 SST-2 did not learn)
SCHEDULE_EXTRA = (("sst2", 1e-3),)
SCHEDULE = {"kind": "linear", "start": 1e-3, "end": 1e-2, "stages": 4, "epochs_per_stage": 1.0}
# Figure 3 again at the `sora train` gate defaults (tau = xi * lr_t, lr 1e-3) on the longer runs' training sets, where
# the tasks are learned: xi from a quarter of the largest Adam step to all of it
SCHEDULE_DEFAULT = {"kind": "linear", "start": 0.25, "end": 1.0, "stages": 4, "epochs_per_stage": 1.0}
SCHEDULE_DEFAULT_TASKS = ("sst2", "mrpc", "stsb")
# Longer runs (None: the whole train split) with COMMON's 2 epochs: 312 (RTE) to 1070 (CoLA) steps. Every method at
# its `sora train` default learning rate (no search: the same budget, zero, for each); SoRA at the `sora train`
# defaults, and once (SST-2, seed 0) at the benchmark's gate settings, to test whether a constant threshold kills
# every rank in a long run. LoRA, AdaLoRA and SoRA run first for every seed, then full fine-tuning and BitFit.
LONG_SAMPLES = {"cola": None, "sst2": 8000, "mrpc": None, "stsb": None, "rte": None}
LONG_METHODS = (("lora", "adalora", "sora-default"), ("full", "bitfit"))
# The Defaults table (issue: defaults that learn): `sora train` exactly at its defaults, only task and data flags
# (the whole train splits; SST-2 a seeded 20k subset), LoRA, SoRA and AdaLoRA, 3 seeds: every cell of a seed before
# the next seed, the tasks that collapsed most often at the old defaults (STS-B, MRPC) first.
DEFAULTS_SAMPLES = {"stsb": None, "mrpc": None, "rte": None, "cola": None, "sst2": 20000}
DEFAULTS_METHODS = ("lora", "sora-default", "adalora")
# The Equal-budget table (issue: sparsity budget), at the Defaults recipe otherwise: SoRA r_max=8 trained to 70% and
# 50% of its adapter's parameters (`--target-ratio`), LoRA and AdaLoRA (target_r; initial rank 1.5x) at the nearest
# equal sizes, ranks 6 (75%) and 4 (50%). LoRA r=8 is the Defaults table's run. Then (issue: ranks follow the
# initialisation) SoRA at both budgets with the allocation the data chose (constant gates, contribution top-up; the
# plain budget rows are the N(0, 1) default), and LoRA r=4 at lora_alpha 8: the update scale of SoRA's modules
# (alpha / r_max = 16 / 8) at LoRA r=4's size. (label, rank, target ratio, other settings)
# Every seed of a group runs before the next group: the 50% comparisons (allocation, scale) before the 70% one.
# The two allocations, named (a budgeted `sora train` defaults to LEARNED since the allocation study).
PAPER = {"gate_init": "randn", "budget_score": "gate"}
LEARNED = {"gate_init": 1.0, "budget_score": "contribution"}
EQUAL_BUDGET_GROUPS = (
    (
        ("sora-budget70", RANK, 0.7, PAPER), ("sora-budget50", RANK, 0.5, PAPER),
        ("lora", 6, None, {}), ("lora", 4, None, {}), ("adalora", 6, None, {}), ("adalora", 4, None, {}),
        ("sora-budget50-const-contribution", RANK, 0.5, LEARNED), ("lora-alpha8", 4, None, {"lora_alpha": 8}),
    ),
    (("sora-budget70-const-contribution", RANK, 0.7, LEARNED),),
)  # fmt: skip
EQUAL_BUDGET = tuple(row for group in EQUAL_BUDGET_GROUPS for row in group)
# The front (issue: what SoRA buys a user): ONE `sora schedule --target-list` run against the LoRA rank sweep it
# replaces, at the Defaults recipe. The schedule's stages land on the sweep's sizes (75, 50, 25, 12.5 % of the r_max=8
# adapter: LoRA r = 6, 4, 2, 1), one epoch each, with the learned allocation of a budgeted `sora train`. The sweep
# reuses the Defaults table's LoRA r=8 and the Equal-budget table's LoRA r=4 and r=6; the rest is run here. Group by
# group, each over every seed and task: the schedule with the sweep's missing ranks, then the other methods at the
# same sizes (AdaLoRA and SoRA single budgets; EVA, PEFT's data-driven allocation, last: its learning rate is the EVA
# search's, ``LR_SEARCH``). (label, rank, settings)
FRONT_TASKS = ("sst2", "stsb", "mrpc")
FRONT_TARGETS = (0.75, 0.5, 0.25, 0.125)
FRONT_SCHEDULE = {"label": "sora-schedule", "targets": FRONT_TARGETS, "epochs_per_stage": 1.0,
                  "settings": {"gate_init": LEARNED["gate_init"]}}  # fmt: skip
FRONT_GROUPS = (
    (("lora", 2, {}), ("lora", 1, {})),
    (
        ("adalora", 2, {}), ("adalora", 1, {}),
        ("sora-budget25-const-contribution", RANK, {**LEARNED, "target_ratio": 0.25}),
        ("sora-budget12-const-contribution", RANK, {**LEARNED, "target_ratio": 0.125}),
    ),
    (("eva", 8, {}), ("eva", 4, {}), ("eva", 2, {}), ("eva", 1, {})),
)  # fmt: skip
# Allocation apart from training: LoRA with the per-module ranks another run found (`--rank-pattern-from` its result
# file), at 50% and LoRA r=4's scale (lora_alpha / 4 in every module): SoRA's learned allocation (the Equal-budget run
# of the same seed) and EVA's (r=4). (label, rank, (experiment, source label, source rank))
FRONT_PATTERNS = (
    ("lora-ranks-sora50", 4, ("equal", "sora-budget50-const-contribution", RANK)),
    ("lora-ranks-eva4", 4, ("front", "eva", 4)),
)
# Learning-rate searches at `sora train`'s defaults otherwise (seed 0): full fine-tuning on the tasks whose bar an
# adapter may not reach on this backbone (where it cannot clear a bar either, the bar is set from it); AdaLoRA,
# whose adapters start at zero singular values and learn slowly in 3 epochs (its paper: up to 30 epochs on MRPC);
# EVA at r=2, where LoRA's rate made it collapse on MRPC and STS-B (its A, the inputs' top singular vectors, gives
# its branch 5-8x LoRA's output at the same rank). (tasks, learning rates, rank)
LR_SEARCH = {
    "full": (("rte", "cola"), (2e-5, 5e-5, 1e-4), RANK),
    "adalora": (("mrpc", "rte", "cola"), (2e-3, 5e-3, 1e-2), RANK),
    "eva": (("mrpc", "stsb"), (1e-4, 2e-4, 5e-4), 2),
}
# Longer training at `sora train`'s defaults otherwise, of a run that stays below a bar in 3 epochs: whether it is
# under-trained (AdaLoRA: its paper trains MRPC for 30 epochs) or the task is out of reach. (task, method, epochs, seed)
EPOCH_RUNS = (("mrpc", "adalora", 10, 0), ("rte", "lora", 10, 0), ("cola", "adalora", 10, 2))
# The head experiment: the longer runs that stayed at chance while another seed learned (pooler frozen), run again
# with nothing changed but the code's head, which now trains the pooler: the controlled test of the cause.
HEAD_RERUNS = (
    ("stsb", "lora", 1), ("stsb", "lora", 2), ("stsb", "sora-default", 1), ("stsb", "sora-default", 2),
    ("mrpc", "lora", 1), ("cola", "lora", 0), ("cola", "lora", 2), ("cola", "sora-default", 2),
)  # fmt: skip
# The allocation study (issue: ranks follow the initialisation): SST-2, 300 steps at batch 32, a 50% budget; every
# variant three times: gate seeds 1 and 2 with the same data (seed 0), and gate seed 1 with another data order
# (seed 1). sora.allocation's numbers: the survivors' share among the largest initial |g| (near chance: the
# initialisation did not choose), the survivors two gate seeds share and those two data orders share (above
# chance: the data chose; a constant init is the same for every gate seed). (label, settings)
ALLOCATION_TASK = "sst2"
ALLOCATION_COMMON = {"max_train_samples": 4800, "epochs": 2.0, "batch_size": 32, "target_ratio": 0.5}
ALLOCATION = (
    ("sora-randn", PAPER),
    ("sora-const", {**PAPER, "gate_init": 1.0}),
    ("sora-randn-gatelr", {**PAPER, "gate_lr": 1e-2}),
    ("sora-const-gatelr", {**PAPER, "gate_init": 1.0, "gate_lr": 1e-2}),
    ("sora-randn-contribution", {**PAPER, "budget_score": "contribution"}),
    ("sora-const-contribution", LEARNED),
)
ALLOCATION_RUNS = ((0, 1), (0, 2), (1, 1))  # (seed: data order and the rest, gate seed)
# Experiments whose failed runs (e.g. every rank pruned) are results, not retried
FAILURES_ARE_RESULTS = ("xigrid", "long", "defaults", "equal", "allocation", "front")


EXPERIMENTS = (
    "xigrid", "hpsearch", "table1", "table2", "speed", "schedule", "long", "head", "lrsearch", "epochs", "defaults",
    "equal", "allocation", "front", "all",
)  # fmt: skip


def train_method(label: str) -> str:
    """The ``sora train --method`` of a method label ("sora-default" -> "sora")."""
    return label.split("-", 1)[0]


def gate_settings(label: str) -> dict[str, Any] | None:
    """The gate settings a label trains with ({}: TrainConfig's defaults; None: not chosen yet)."""
    return sora_settings() if label == "sora" else {}


def run_name(task: str, method: str, r: int, seed: int, trial: int | str | None = None) -> str:
    """``task_method_rR_seedS``, then ``_trialK`` (a search's trial K) or ``_<trial>`` (a named variant)."""
    suffix = "" if trial is None else f"_trial{trial}" if isinstance(trial, int) else f"_{trial}"
    return f"{task}_{method}_r{r}_seed{seed}{suffix}"


def front_stage_rank(ratio: float) -> int:
    """The LoRA rank of the size a front schedule stage targets (a share of the r_max=RANK adapter)."""
    return round(ratio * RANK)


def front_run_names(seeds: tuple[int, ...] = SEEDS) -> list[str]:
    """Every run of the front at these seeds: per seed and task the schedule, the ``FRONT_GROUPS`` runs and the
    ``FRONT_PATTERNS`` runs."""
    labels = ((FRONT_SCHEDULE["label"], RANK), *((m, r) for g in FRONT_GROUPS for m, r, _ in g),
              *((m, r) for m, r, _ in FRONT_PATTERNS))  # fmt: skip
    return [run_name(t, label, r, s) for s in seeds for t in FRONT_TASKS for label, r in labels]


def result_path(experiment: str, name: str) -> Path:
    return RESULTS / experiment / f"{name}.json"


def read_result(experiment: str, name: str) -> dict[str, Any] | None:
    path = result_path(experiment, name)
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def sora_settings() -> dict[str, Any] | None:
    if not SORA_SETTINGS_FILE.is_file():
        return None
    return json.loads(SORA_SETTINGS_FILE.read_text(encoding="utf-8"))["settings"]


def best_lr(method: str) -> float | None:
    """The learning rate of ``method``'s best hpsearch trial; None until all its trials exist."""
    trials = [read_result("hpsearch", run_name(HP_TASK, method, RANK, 0, k)) for k in range(len(LR_TRIALS[method]))]
    if any(t is None for t in trials):
        return None
    scores = [t["eval"][t["primary_metric"]] for t in trials]
    return LR_TRIALS[method][scores.index(max(scores))]


class Runner(runner.Runner):
    """The GLUE experiments over the shared runner (``runner.Runner``: claims, records, budget)."""

    def run(
        self,
        experiment: str,
        task: str,
        method: str,
        seed: int,
        r: int = RANK,
        trial: int | str | None = None,
        extra: dict[str, Any] | None = None,
        common: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> dict[str, Any] | None:
        """The result of one run (``runner.Runner.attempt``): read if its JSON exists, else trained now; {}: failed;
        None: not run (budget or busy). A failed run is retried by the next invocation, unless the experiment is
        one of ``FAILURES_ARE_RESULTS``."""
        name = run_name(task, method, r, seed, trial)
        out = self.scratch / experiment / name

        def setup() -> runner.Run:
            from sora.train import TrainConfig, train

            settings = {**(COMMON if common is None else common), "max_train_samples": TRAIN_SAMPLES[task], **overrides}
            cfg = TrainConfig(
                task=task, output_dir=str(out), method=train_method(method), r=r, seed=seed, model=MODEL,
                data_dir=runner.require_glue_dir(self.data_dir), **settings,
            )  # fmt: skip
            command = runner.command_line(cfg, self.threads)

            def work() -> dict[str, Any]:
                metrics = train(cfg)
                numbers = {**metrics, "loss_log": _loss_log(out / "train_log.jsonl"),
                           "survivors": _survivors(out / "gates.safetensors")}  # fmt: skip
                shutil.rmtree(out / "checkpoints", ignore_errors=True)
                return numbers

            def failure() -> dict[str, Any]:
                return {"command": command, "hyperparameters": cfg.hyperparameters(), "task": task, "method": method,
                        "live_ranks_log": _live_ranks_log(out / "train_log.jsonl")}  # fmt: skip

            # the method label as "variant" (metrics' "method" is the `sora train --method`)
            fields = {"variant": method, "command": command, "runner": f"python benchmarks/glue.py {experiment}"}
            return runner.Run({**fields, **(extra or {})}, work, failure, _summary)

        failed = RESULTS / experiment / "failed" / f"{name}.json"
        job = runner.Job(experiment, name, result_path(experiment, name), failed, out, setup,
                         failures_are_results=experiment in FAILURES_ARE_RESULTS)  # fmt: skip
        return self.attempt(job)

    def copy_result(self, experiment: str, name: str, source: dict[str, Any], source_ref: str) -> dict[str, Any]:
        from sora import _io

        result = {**source, "experiment": experiment, "reused_from": source_ref}
        _io.write_json(result_path(experiment, name), result)
        return result

    # -- experiments -----------------------------------------------------------------------------------------------
    def xigrid(self) -> bool:
        complete = True
        for k, (method, gate) in enumerate(XIGRID):
            extra = {"xigrid_settings": gate}
            complete &= self.run("xigrid", XIGRID_TASK, method, 0, trial=k, extra=extra, lr=1e-3, **gate) is not None
        return complete

    def hpsearch(self) -> bool:
        complete = True
        for method in sorted(METHODS, key=lambda m: m == "sora"):  # SoRA last: it waits for sora_settings.json
            for k, lr in enumerate(LR_TRIALS[method]):
                gate = gate_settings(method)
                if gate is None:
                    complete = False
                    continue
                complete &= self.run("hpsearch", HP_TASK, method, 0, trial=k, lr=lr, **gate) is not None
        return complete

    def table_run(self, experiment: str, task: str, method: str, seed: int, r: int = RANK) -> dict[str, Any] | None:
        lr = best_lr(method)
        gate = gate_settings(method)
        if lr is None or gate is None:
            return None
        name = run_name(task, method, r, seed)
        if task == HP_TASK and seed == 0 and r == RANK and read_result(experiment, name) is None:
            k = LR_TRIALS[method].index(lr)
            trial = read_result("hpsearch", run_name(task, method, r, seed, k))
            return self.copy_result(experiment, name, trial, f"hpsearch/{run_name(task, method, r, seed, k)}.json")
        if experiment == "table2" and r == RANK and read_result(experiment, name) is None:
            source = read_result("table1", name)
            if source is not None:
                return self.copy_result(experiment, name, source, f"table1/{name}.json")
        return self.run(experiment, task, method, seed, r=r, lr=lr, **gate)

    def table1(self, seeds: list[int]) -> bool:
        complete = True
        for seed in seeds:
            for task in TASKS:
                for method in METHODS:
                    complete &= self.table_run("table1", task, method, seed) is not None
        return complete

    def table2(self) -> bool:
        complete = True
        for task in TABLE2_TASKS:
            for r in RANKS:
                for method in ("sora", "lora"):
                    complete &= self.table_run("table2", task, method, 0, r=r) is not None
        return complete

    def long_run(self, experiment: str, task: str, method: str, seed: int) -> dict[str, Any] | None:
        """One run at the longer runs' settings: ``LONG_SAMPLES``, the method's default learning rate."""
        from sora.methods import get_method

        gate = gate_settings(method)
        if gate is None:
            return None
        lr = get_method(train_method(method)).default_lr
        return self.run(experiment, task, method, seed, lr=lr, max_train_samples=LONG_SAMPLES[task], **gate)

    def long(self, seeds: list[int]) -> bool:
        complete = True
        jobs = [("sst2", "sora", 0)] + [
            (t, m, s) for group in LONG_METHODS for s in seeds for t in LONG_SAMPLES for m in group
        ]
        for task, method, seed in jobs:
            complete &= self.long_run("long", task, method, seed) is not None
        return complete

    def head(self) -> bool:
        """``HEAD_RERUNS``: the longer runs' settings (``long``) again, the pooler now trained."""
        complete = True
        for task, method, seed in HEAD_RERUNS:
            complete &= self.long_run("head", task, method, seed) is not None
        return complete

    def lrsearch(self, only: list[str] | None = None) -> bool:
        """``LR_SEARCH``: method x task x learning rate at `sora train`'s defaults but the learning rate, seed 0."""
        complete = True
        for method, (tasks, lrs, r) in LR_SEARCH.items():
            for task in tasks:
                if only and task not in only:
                    continue
                for k, lr in enumerate(lrs):
                    got = self.run("lrsearch", task, method, 0, r=r, trial=k, common={}, lr=lr, max_train_samples=None)
                    complete &= got is not None
        return complete

    def epochs(self) -> bool:
        """``EPOCH_RUNS``: longer runs at `sora train`'s defaults but the number of epochs."""
        complete = True
        for task, method, epochs, seed in EPOCH_RUNS:
            got = self.run(
                "epochs", task, method, seed, trial=f"epochs{epochs}", common={}, epochs=epochs, max_train_samples=None
            )
            complete &= got is not None
        return complete

    def defaults(self, seeds: list[int], tasks: list[str] | None = None) -> bool:
        """The Defaults table: no setting but the task, the data and the seed (``common={}``)."""
        runs = [(method, RANK, {}) for method in DEFAULTS_METHODS]
        return self._at_defaults("defaults", runs, seeds, tasks)

    def equal(self, seeds: list[int], tasks: list[str] | None = None) -> bool:
        """The Equal-budget table: ``EQUAL_BUDGET_GROUPS`` at the Defaults recipe otherwise, group by group."""
        complete = True
        for group in EQUAL_BUDGET_GROUPS:
            runs = [
                (label, r, {**settings, **({"target_ratio": ratio} if ratio else {})})
                for label, r, ratio, settings in group
            ]
            complete &= self._at_defaults("equal", runs, seeds, tasks)
        return complete

    def allocation(self) -> bool:
        """``ALLOCATION``: each variant at every (seed, gate seed) of ``ALLOCATION_RUNS``."""
        complete = True
        for seed, gate_seed in ALLOCATION_RUNS:
            for label, settings in ALLOCATION:
                got = self.run(
                    "allocation", ALLOCATION_TASK, label, seed, trial=f"gateseed{gate_seed}", common={},
                    **ALLOCATION_COMMON, **settings, gate_seed=gate_seed,
                )  # fmt: skip
                complete &= got is not None
        return complete

    def _at_defaults(self, experiment: str, runs: list, seeds: list[int], tasks: list[str] | None) -> bool:
        """``runs`` ((label, rank, settings)) on every task and seed, at `sora train`'s defaults otherwise; every
        run of a seed before the next seed."""
        complete = True
        for seed in seeds:
            for task, samples in DEFAULTS_SAMPLES.items():
                if tasks and task not in tasks:
                    continue
                for label, r, settings in runs:
                    got = self.run(experiment, task, label, seed, r=r, common={}, max_train_samples=samples, **settings)
                    complete &= got is not None
        return complete

    def speed(self) -> bool:
        """Table 4: rounds of LoRA, AdaLoRA, SoRA runs (order rotated per round), all in this one invocation.

        One worker does them all (an experiment lock). The runs go to ``speed.partial/`` and replace ``speed/`` only
        once the whole set is done, so the ratios always come from one invocation and an interrupted invocation
        leaves the previous complete set in place (its partial set is started over next time).
        """
        from sora import _io

        lrs = {m: best_lr(m) or 1e-3 for m in SPEED_METHODS}
        gates = {m: gate_settings(m) for m in SPEED_METHODS}
        names = [run_name(SPEED_TASK, m, RANK, 0, k) for k in range(SPEED_ROUNDS) for m in SPEED_METHODS]
        if all(read_result("speed", n) for n in names) or self.budget.exhausted():
            return all(read_result("speed", n) for n in names)
        if None in gates.values():
            return False
        with self.claim("speed", "ALL") as claimed:
            if not claimed:
                return True  # another worker does the speed runs
            staging = RESULTS / "speed.partial"
            shutil.rmtree(staging, ignore_errors=True)
            for k in range(SPEED_ROUNDS):
                order = SPEED_METHODS[k % 3 :] + SPEED_METHODS[: k % 3]
                for method in order:
                    got = self.run(
                        "speed.partial", SPEED_TASK, method, 0, trial=k, lr=lrs[method], epochs=1.0,
                        max_eval_samples=SPEED_EVAL_SAMPLES, **gates[method],
                    )  # fmt: skip
                    if not got:
                        return False
            for path in staging.glob("*.json"):  # the results name the experiment they belong to
                result = json.loads(path.read_text(encoding="utf-8"))
                result["experiment"] = "speed"
                result["runner"] = "python benchmarks/glue.py speed"
                _io.write_json(path, result)
            shutil.rmtree(RESULTS / "speed", ignore_errors=True)
            staging.rename(RESULTS / "speed")
            return True

    def schedule(self) -> bool:
        from sora.methods import get_method
        from sora.schedule import xi_values

        complete = True
        lr = best_lr("sora") or 1e-3
        # (run name, task, lr, method label, training samples, xi schedule)
        jobs = [(f"{t}_sora_r{RANK}_seed0", t, lr, "sora", TRAIN_SAMPLES[t], SCHEDULE) for t in SCHEDULE_TASKS]
        jobs += [(f"{t}_sora_r{RANK}_seed0_trial1", t, extra_lr, "sora", TRAIN_SAMPLES[t], SCHEDULE)
                 for t, extra_lr in SCHEDULE_EXTRA]  # fmt: skip
        jobs += [(f"{t}_sora-default_r{RANK}_seed0", t, get_method("sora").default_lr, "sora-default", LONG_SAMPLES[t],
                  SCHEDULE_DEFAULT) for t in SCHEDULE_DEFAULT_TASKS]  # fmt: skip
        for name, task, lr, label, samples, sched in jobs:
            gate = gate_settings(label)
            if gate is None and read_result("schedule", name) is None:
                complete = False
                continue
            settings = {**COMMON, "max_train_samples": samples, **(gate or {})}
            settings.pop("epochs")
            xis = xi_values(sched["kind"], sched["start"], sched["end"], sched["stages"])
            options = (
                f" --xi-schedule {sched['kind']} --xi-start {sched['start']:g} --xi-max {sched['end']:g}"
                f" --stages {sched['stages']}"
            )
            run = {"task": task, "seed": 0, "lr": lr, **settings}
            complete &= self.schedule_run("schedule", name, run, xis, sched["epochs_per_stage"], options, {"lr": lr})
        return complete

    def schedule_run(
        self,
        experiment: str,
        name: str,
        settings: dict[str, Any],
        xis: list[float],
        epochs_per_stage: float,
        options: str,
        extra: dict[str, Any],
        targets: list[float] | None = None,
    ) -> bool:
        """One resumable ``sora schedule`` run of ``TrainConfig(**settings)`` on the embedded MiniLM
        (:meth:`runner.Runner.schedule_run`); True when its result exists."""
        from sora.train import TrainConfig

        result = result_path(experiment, name)
        if result.is_file():  # done: no GLUE folder needed
            return True
        cfg = TrainConfig(output_dir=str(self.scratch / experiment / name), method="sora", model=MODEL,
                          data_dir=runner.require_glue_dir(self.data_dir), **settings)  # fmt: skip
        fields = {"runner": f"python benchmarks/glue.py {experiment}", **extra}
        return super().schedule_run(experiment, name, result, cfg, xis, epochs_per_stage, options, fields, targets)

    def front(self, seeds: list[int], tasks: list[str] | None = None) -> bool:
        """The front: per seed and task, one ``sora schedule --target-list`` run (``FRONT_SCHEDULE``), then the
        ``FRONT_GROUPS`` runs at the Defaults recipe (the schedule's steps and seconds are in its result); after each
        group, the ``FRONT_PATTERNS`` runs whose source runs exist (SoRA's pattern comes from an older experiment, so
        it runs before EVA's group)."""
        complete = True
        cells = [(seed, task) for seed in seeds for task in FRONT_TASKS if not tasks or task in tasks]
        for group_index, group in enumerate(FRONT_GROUPS):
            for seed, task in cells:
                samples = DEFAULTS_SAMPLES[task]
                if group_index == 0:
                    targets = list(FRONT_SCHEDULE["targets"])
                    settings = {"task": task, "seed": seed, "max_train_samples": samples,
                                **FRONT_SCHEDULE["settings"]}  # fmt: skip
                    options = " --target-list " + ",".join(f"{t:g}" for t in targets)
                    complete &= self.schedule_run(
                        "front", run_name(task, FRONT_SCHEDULE["label"], RANK, seed), settings, [0.5] * len(targets),
                        FRONT_SCHEDULE["epochs_per_stage"], options, {}, targets=targets,
                    )  # fmt: skip
                for label, r, extra in group:
                    got = self.run("front", task, label, seed, r=r, common={}, max_train_samples=samples, **extra)
                    complete &= got is not None
            patterns_complete = self._front_patterns(cells)
        return complete and patterns_complete

    def _front_patterns(self, cells: list[tuple[int, str]]) -> bool:
        """The ``FRONT_PATTERNS`` runs of these (seed, task) cells whose source run exists; True when all are done."""
        complete = True
        for seed, task in cells:
            for label, r, (experiment, source, source_r) in FRONT_PATTERNS:
                found = result_path(experiment, run_name(task, source, source_r, seed))
                if not found.is_file():  # its source has not run yet
                    complete = False
                    continue
                got = self.run(
                    "front", task, label, seed, r=r, common={}, max_train_samples=DEFAULTS_SAMPLES[task],
                    rank_pattern_from=str(found),
                )  # fmt: skip
                complete &= got is not None
        return complete


def _summary(result: dict[str, Any]) -> str:
    """A GLUE run's result in one line: its dev scores, adapter size and training time."""
    return f"{result['eval']} nonzero={result['nonzero_params']} train={result['train_seconds']}s"


def _log_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _live_ranks_log(path: Path) -> list[list[int]]:
    """[step, live ranks] of each logged step of a run's train_log.jsonl ([] if it has none)."""
    return [[row["step"], row["live_ranks"]] for row in _log_rows(path) if "live_ranks" in row]


def _loss_log(path: Path) -> list[list[float]]:
    """[step, loss, gradient norm] of each logged training step of a run's train_log.jsonl."""
    return [[row["step"], round(row["loss"], 4), round(row.get("grad_norm", float("nan")), 4)]
            for row in _log_rows(path) if "loss" in row]  # fmt: skip


def _survivors(path: Path) -> list[int] | None:
    """The indices of the live gate entries at the end of a SoRA run (its gates.safetensors), else None."""
    if not path.is_file():
        return None
    from safetensors.torch import load_file

    return [int(i) for i in load_file(str(path))["final"].nonzero().reshape(-1)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "experiment",
        choices=EXPERIMENTS,
        nargs="+",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=list(SEEDS),
        help="Table 1, long-run, defaults and equal seeds (default: 0 1 2)",
    )
    parser.add_argument(
        "--tasks", nargs="+", choices=TASKS, default=None, help="defaults, equal, front, lrsearch: only these tasks"
    )
    runner.add_runner_options(parser, os.environ.get("SORA_BENCH_SCRATCH", DEFAULT_SCRATCH))
    args = parser.parse_args(argv)
    runner.quiet_threads(args.threads)
    worker = Runner(args)
    plan: list[tuple[str, Any]] = []
    for experiment in args.experiment:
        if experiment == "all":
            plan += [
                ("xigrid", worker.xigrid),
                ("hpsearch", worker.hpsearch),
                ("table1", lambda: worker.table1([0])),
                ("speed", worker.speed),
                ("table1", lambda: worker.table1([0, 1])),
                ("table2", worker.table2),
                ("schedule", worker.schedule),
                ("table1", lambda: worker.table1(list(SEEDS))),
                ("long", lambda: worker.long(list(SEEDS))),
            ]
        elif experiment in ("table1", "long"):
            plan.append((experiment, functools.partial(getattr(worker, experiment), args.seeds)))
        elif experiment in ("defaults", "equal", "front"):
            plan.append((experiment, functools.partial(getattr(worker, experiment), args.seeds, args.tasks)))
        elif experiment == "lrsearch":
            plan.append((experiment, functools.partial(worker.lrsearch, args.tasks)))
        else:
            plan.append((experiment, getattr(worker, experiment)))
    complete = True
    for experiment, step in plan:
        done = runner.until_done(step, worker)
        print(f"[{runner.now()}] {experiment}: {'complete' if done else 'stopped (budget)'}", flush=True)
        complete &= done
    print(f"[{runner.now()}] ran {worker.ran} runs; failed: {worker.failed or 'none'}", flush=True)
    return 0 if complete and not worker.failed else 1


if __name__ == "__main__":
    sys.exit(main())
