"""The sparsifying scheduler: Algorithm 1 of Ding et al. 2023 (SoRA), on transformers' Trainer.

Algorithm 1 trains SoRA at a sparsity strength ``xi_1``, then keeps training the same model with the same optimizer
while ``xi`` is raised stage by stage, and records after every stage how many parameters survive and how the adapter
scores on its training data (memorization) and on the dev data (generalization): the paper's Figure 3.

``run_schedule`` writes into ``cfg.output_dir``:

- ``schedule.json``: ``{"task", "schedule", "primary_metric", "xis", "epochs_per_stage", "stages": [row, ...]}``;
  a row is ``stage`` (1-based), ``xi``, ``nonzero_params``, ``live_ranks``, ``ranks``, ``train`` and ``dev`` (task
  metrics), ``revived`` (more non-zero parameters than the stage before: pruned ranks can come back) and ``seconds``
  (the stage's training time);
- ``schedule.csv`` (one line per row, metrics as ``train_<name>`` / ``dev_<name>``) and ``curves.png``;
- ``adapters/stage_K/``: stage K's pruned adapter, in ``sora train``'s format (``sora eval --adapter`` reads it);
- ``state/stage_K/``: the unpruned model and its optimizer after stage K (safetensors), for ``resume``;
- ``run_config.json`` and ``train_log.jsonl`` as ``sora train`` writes them (every log row names its ``stage``).

``pick_stage`` reads the curve as a user would: the smallest stage whose dev score is within ``PICK_WITHIN`` points of
the best stage's (1% of the best loss for causal-lm; ``sora schedule`` names it and its adapter at the end).

All of them are rewritten atomically after every stage, so an interrupted schedule leaves complete files for the
stages it finished; ``schedule.json`` is written last and is what ``resume`` trusts.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import transformers
from transformers import get_constant_schedule_with_warmup

from . import _io
from .analysis import plot_schedule_curves, read_train_log
from .budget import SparsityBudget
from .callback import SoraCallback
from .data import subsample
from .errors import SoraError
from .methods import get_method, names
from .model import count_parameters, gate_ranks, load_sora, save_sora
from .optim import SoraOptimizer
from .prune import prune
from .run_config import TrainConfig
from .run_folder import RUN_MARKER, eval_batch_size, export, prepare_output
from .sharding import fsdp_launched
from .tasks import task_family
from .train import with_default_model
from .trainer import SoraTrainer, StepHooks, training_args

SCHEDULE_FILE = "schedule.json"

# The authors' three ways from xi_1 = a to xi_n = b (their optimizer's ``lambda_schedule``).
_SCHEDULES: dict[str, Callable[[float, float, int], np.ndarray]] = {
    "linear": lambda a, b, n: np.linspace(a, b, n),
    "log_linear": lambda a, b, n: np.log(np.linspace(np.exp(a), np.exp(b), n)),
    "exp_linear": lambda a, b, n: np.exp(np.linspace(np.log(a), np.log(b), n)),
}
KINDS = tuple(_SCHEDULES)
PICK_WITHIN = 1.0  # how much worse than the best stage the picked one may score: points of a score, % of a loss


def pick_stage(schedule: dict[str, Any], within: float = PICK_WITHIN) -> dict[str, Any]:
    """The stage a user keeps from a schedule's size-accuracy curve (``schedule.json``): the one with the fewest
    non-zero adapter parameters among those whose dev ``primary_metric`` is within ``within`` of the best stage's:
    percentage points of a score (the GLUE metrics), percent of the best value of a loss (lower is better)."""
    if not (math.isfinite(within) and within >= 0):
        raise SoraError(f"within must be a finite number >= 0, got {within!r}")
    metric, rows = schedule["primary_metric"], schedule["stages"]
    values = [row["dev"][metric] for row in rows]
    if metric == "loss":
        shortfall = [100 * (v - min(values)) / max(min(values), 1e-12) for v in values]
    else:
        shortfall = [100 * (max(values) - v) for v in values]
    near = [row for row, short in zip(rows, shortfall, strict=True) if round(short, 9) <= within]
    return min(near, key=lambda row: row["nonzero_params"])


def xi_values(kind: str, start: float, end: float | None, n: int) -> list[float]:
    """The ``n`` sparsity strengths of Algorithm 1 from ``start`` to ``end``, built as in the authors' code.

    ``linear``: ``linspace(start, end, n)``; ``log_linear``: ``log(linspace(exp(start), exp(end), n))``;
    ``exp_linear``: ``exp(linspace(log(start), log(end), n))`` (geometric, so ``start`` must be > 0).
    """
    if kind not in _SCHEDULES:
        raise SoraError(f"unknown xi schedule {kind!r}; known schedules: {', '.join(KINDS)}")
    if end is None:
        raise SoraError(f"the {kind} xi schedule needs its last value (--xi-max)")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SoraError(f"the number of stages must be an integer >= 1, got {n!r}")
    if not (math.isfinite(start) and math.isfinite(end) and 0 <= start <= end):
        raise SoraError(f"an xi schedule needs finite 0 <= start <= end, got start={start!r}, end={end!r}")
    if kind == "exp_linear" and start == 0:
        raise SoraError("the exp_linear xi schedule is geometric: its start must be > 0")
    values = _values(kind, float(start), float(end), n)
    if not np.isfinite(values).all():
        raise SoraError(f"the {kind} xi schedule from {start!r} to {end!r} overflows (exp of the end)")
    return [float(v) for v in values]


def _values(kind: str, start: float, end: float, n: int) -> np.ndarray:
    """The raw schedule; an overflow (exp of a large end) comes out as inf or nan for the caller to judge."""
    with np.errstate(all="ignore"):
        return _SCHEDULES[kind](start, end, n)


def _schedule_name(xis: list[float]) -> str:
    """The first schedule kind that reproduces ``xis`` from their ends (to 1e-9), else ``"list"``."""
    for kind in KINDS:
        if np.allclose(_values(kind, xis[0], xis[-1], len(xis)), xis, rtol=1e-9, atol=0):
            return kind
    return "list"


def run_schedule(
    cfg: TrainConfig,
    xis: list[float],
    epochs_per_stage: float,
    resume: bool = False,
    targets: list[float] | None = None,
) -> dict[str, Any]:
    """Algorithm 1: train SoRA for ``epochs_per_stage`` epochs at each xi in turn; returns what ``schedule.json``
    holds (its ``stages``: one row per stage).

    Stage 1 trains at ``xis[0]``; every later stage goes on with the same model and optimizer (Adam moments, step
    counts, gates) at the next xi (``SoraOptimizer.set_xi``). ``cfg`` is a SoRA ``TrainConfig``; its ``xi`` and
    ``epochs`` are replaced by ``xis`` and ``epochs_per_stage``. A stage ends with its last step (no best-checkpoint
    selection: the paper records each stage's end); a stage that prunes every rank stops the schedule (SoraError).
    ``schedule.json`` names the schedule by the kind of :func:`xi_values` that reproduces ``xis``, else ``"list"``.

    Learning rate: one schedule over all stages, a linear warmup over ``cfg.warmup_ratio`` of all the steps, then
    constant. The authors' code continues training with the same optimizer; a constant rate also keeps the paper's
    threshold ``tau = xi * lr_t`` proportional to xi, so each stage differs from the last only by its xi (a decaying
    rate would weaken the late, large xis).

    Resume: with ``resume=True`` on this schedule's unfinished folder (same ``cfg``, ``xis`` and
    ``epochs_per_stage``), the finished stages' rows are kept and training continues from the model and optimizer
    saved after the last finished stage; a stage that was interrupted is redone from its start. Every stage's
    Trainer seeds all RNGs with ``cfg.seed + stage`` (data order, dropout) and the learning rate depends on the
    global step alone, while the saved state is bit-exact (float32 safetensors): so a resumed schedule ends with the
    same gates and rows (``seconds`` aside) as an uninterrupted one on the same machine and software.

    Budgets instead of xis: with ``targets`` (one fraction of the r_max adapter per stage, as many as ``xis``), each
    stage attaches a :class:`~sora.budget.SparsityBudget` that steers xi from the stage's start count to its target
    by the stage's end; the row's ``xi`` is then the controller's xi at the stage's end and ``target_params`` the
    stage's target. Its top-up ranks by the budget's default score (contribution, as ``sora train --target-ratio``),
    and ``sora schedule --target-list`` starts the gates at 1.0 as ``sora train`` does.
    """
    method = get_method(cfg.method)
    if not method.schedule:
        raise SoraError(f"the sparsifying scheduler trains {' or '.join(names('schedule'))}, not {cfg.method!r}")
    if cfg.fsdp or fsdp_launched():
        raise SoraError("the sparsifying scheduler runs in one process only: FSDP (--fsdp) is for sora train")
    if cfg.load_in_4bit:
        raise SoraError("the sparsifying scheduler trains a full-precision base: --load-in-4bit is for sora train")
    cfg = with_default_model(cfg)
    xis = _check_xis(xis)
    if targets is not None:
        if len(targets) != len(xis):
            raise SoraError(f"a budget schedule needs one target per stage: {len(targets)} targets, {len(xis)} stages")
        for target in targets:
            SparsityBudget(target_ratio=target)  # checks the value
    if not (isinstance(epochs_per_stage, int | float) and math.isfinite(epochs_per_stage) and epochs_per_stage > 0):
        raise SoraError(f"epochs_per_stage must be > 0, got {epochs_per_stage!r}")
    out = prepare_output(cfg, resume)
    saved = _finished(out, xis, epochs_per_stage, targets) if resume else None
    if saved and len(saved["stages"]) == len(xis):
        return saved
    rows = saved["stages"] if saved else []
    transformers.set_seed(cfg.seed)
    family = task_family(cfg.task)
    data, tokenizer, train_set, dev, model = family.load(cfg)
    train_eval = subsample(train_set, cfg.max_eval_samples, cfg.seed)
    steps = math.ceil(math.ceil(len(train_set) / cfg.batch_size) * epochs_per_stage)
    if rows:  # the saved param groups restore every hyperparameter (lr, xi, threshold, ...): only the grouping matters
        model, optimizer = load_sora(model, _state_dir(out, len(rows)), lambda m: SoraOptimizer(m, lr=cfg.lr))
    else:
        model, optimizer = method.build(
            cfg, model, task_type=family.task_type, heads=family.heads(model), total_steps=steps * len(xis)
        )
    schedule = {
        "task": cfg.task,
        "schedule": "targets" if targets is not None else _schedule_name(xis),
        "primary_metric": data.spec.primary_metric,
        "xis": xis,
        "targets": targets,
        "epochs_per_stage": epochs_per_stage,
        "stages": rows,
    }
    log = [row for row in read_train_log(out / "train_log.jsonl") if row["stage"] <= len(rows)] if rows else []
    if not rows:
        _io.write_json(out / RUN_MARKER, asdict(cfg))
        _io.write_json(out / SCHEDULE_FILE, schedule)

    for stage, xi in enumerate(xis[len(rows) :], start=len(rows) + 1):
        optimizer.set_xi(xi)
        target = None
        if targets is not None:  # the stage's budget: from the count now to its target by the stage's end
            budget = SparsityBudget(target_ratio=targets[stage - 1])
            target = budget.attach(model, optimizer, steps)
        args = training_args(
            cfg,
            out / "state",
            data.spec.primary_metric,
            evaluate=False,
            num_train_epochs=epochs_per_stage,
            max_steps=steps,
            seed=cfg.seed + stage,
            save_strategy="no",
        )
        warmup = args.get_warmup_steps(steps * len(xis))
        scheduler = get_constant_schedule_with_warmup(optimizer, warmup, last_epoch=(stage - 1) * steps - 1)
        trainer = SoraTrainer(
            model=model,
            args=args,
            train_dataset=train_set,
            data_collator=family.collator(tokenizer),
            processing_class=tokenizer,
            optimizers=(optimizer, scheduler),
            callbacks=[StepHooks(model, method), SoraCallback()],
        )
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
        ranks = gate_ranks(model)
        if not any(ranks.values()):
            raise SoraError(
                f"stage {stage} (xi={xi:g}) pruned every rank, so it has no adapter: the schedule stops here "
                f"({out} keeps the {stage - 1} finished stages); use smaller xis"
            )
        save_sora(model, _state_dir(out, stage), optimizer)
        pruned = prune(copy.deepcopy(model))  # prune consumes its input; training goes on with `model`
        export(pruned, tokenizer, data.spec, cfg, out / "adapters" / f"stage_{stage}")
        batch = eval_batch_size(cfg)
        dev_scores: dict[str, float] = {}
        for split, dataset in dev.items():
            dev_scores.update(family.score(pruned, tokenizer, data, dataset, split, batch))
        nonzero = count_parameters(model)["nonzero"]
        revived = bool(rows) and nonzero > rows[-1]["nonzero_params"]
        rows.append(  # rows is schedule["stages"]
            {
                "stage": stage,
                "xi": xi if target is None else optimizer.gate_group["budget_xi"],
                **({} if target is None else {"target_params": target}),
                "nonzero_params": nonzero,
                "live_ranks": sum(ranks.values()),
                "ranks": ranks,
                "train": family.score(pruned, tokenizer, data, train_eval, "train", batch),
                "dev": dev_scores,
                "revived": revived,
                "seconds": round(seconds, 3),
            }
        )
        del pruned
        log.extend({"stage": stage, **row} for row in trainer.state.log_history)
        _write_outputs(out, schedule, log)
    return schedule


def _check_xis(xis: list[float]) -> list[float]:
    """``xis`` as floats: at least one, each finite and >= 0 (a falling xi is allowed: gates may then revive)."""
    if not len(xis):
        raise SoraError("the sparsifying scheduler needs at least one xi")
    for stage, xi in enumerate(xis, start=1):
        if isinstance(xi, bool) or not isinstance(xi, int | float) or not (math.isfinite(xi) and xi >= 0):
            raise SoraError(f"the xi of stage {stage} must be a finite number >= 0, got {xi!r}")
    return [float(xi) for xi in xis]


def _state_dir(out: Path, stage: int) -> Path:
    return out / "state" / f"stage_{stage}"


def _finished(
    out: Path, xis: list[float], epochs_per_stage: float, targets: list[float] | None
) -> dict[str, Any] | None:
    """The schedule this folder holds, with the stages it finished (None before its first); it must be the same
    schedule (xis, epochs, targets)."""
    path = out / SCHEDULE_FILE
    if not path.is_file():
        if (out / RUN_MARKER).is_file():
            raise SoraError(f"{out} holds a `sora train` run, not a schedule: choose another --output-dir")
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SoraError(f"{path} is corrupt: cannot resume this schedule") from None
    if saved.get("xis") != xis or saved.get("epochs_per_stage") != epochs_per_stage or saved.get("targets") != targets:
        raise SoraError(
            f"--resume with another schedule than the one in {out}: it has xis {saved.get('xis')}, "
            f"{saved.get('epochs_per_stage')} epochs per stage and targets {saved.get('targets')}"
        )
    return saved


def _write_outputs(out: Path, schedule: dict[str, Any], log: list[dict[str, Any]]) -> None:
    """Rewrite every file of the schedule; ``schedule.json`` last, so its rows imply complete stage files."""
    _io.write_text(out / "train_log.jsonl", "".join(json.dumps(row) + "\n" for row in log))
    _io.write_text(out / "schedule.csv", _csv(schedule["stages"]))
    plot_schedule_curves(schedule, out / "curves.png")
    _io.write_json(out / SCHEDULE_FILE, schedule)


def _csv(rows: list[dict[str, Any]]) -> str:
    """A CSV line per stage: stage, xi, nonzero_params, live_ranks, train_*, dev_*, revived, seconds."""
    table = [
        {
            "stage": row["stage"],
            "xi": row["xi"],
            "nonzero_params": row["nonzero_params"],
            "live_ranks": row["live_ranks"],
            **{f"train_{k}": v for k, v in row["train"].items()},
            **{f"dev_{k}": v for k, v in row["dev"].items()},
            "revived": row["revived"],
            "seconds": row["seconds"],
        }
        for row in rows
    ]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(table[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    return buffer.getvalue()
