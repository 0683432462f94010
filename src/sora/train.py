"""A run end to end: ``train(TrainConfig(...))`` and ``evaluate_adapter`` (``sora train`` / ``sora eval``).

``train`` loads the task through its family (:mod:`sora.tasks`), fine-tunes with a method of the registry
(:mod:`sora.methods`) on the Trainer (:mod:`sora.trainer`), keeps the best dev checkpoint (as the paper does), exports
the final adapter (SoRA pruned to a standard LoRA adapter) and writes the run folder (:mod:`sora.run_folder`):
``metrics.json``, ``adapter/``, ``ranks.json``, ``ranks.png``, ``train_log.jsonl``, ``checkpoints/``; SoRA also
``gates.safetensors`` (the gate vectors at the start and the end, flat, in module order: :mod:`sora.allocation` reads
them). ``evaluate_adapter`` scores an exported adapter the same way, on the same examples.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import transformers
from safetensors.torch import save_file
from transformers import TrainerCallback

from . import _io
from .allocation import gate_vectors, init_overlap
from .budget import budget_target
from .callback import SoraCallback
from .errors import SoraError
from .methods import get_method
from .run_config import TrainConfig
from .run_folder import (
    RUN_MARKER,
    eval_batch_size,
    export,
    is_main_process,
    last_complete_checkpoint,
    prepare_output,
    saved_task,
)
from .sharding import check_fsdp, unshard_adapter
from .tasks import EvalOptions, task_family
from .trainer import SoraTrainer, StepHooks, training_args

GATES_FILE = "gates.safetensors"
__all__ = ["TrainConfig", "evaluate_adapter", "summary_line", "train", "with_default_model"]


def with_default_model(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with its task family's embedded model where it names none."""
    return cfg if cfg.model is not None else dataclasses.replace(cfg, model=task_family(cfg.task).default_model())


def train(cfg: TrainConfig, resume: bool = False, callbacks: list[TrainerCallback] | None = None) -> dict[str, Any]:
    """Run ``cfg`` end to end and return what ``metrics.json`` holds; ``callbacks`` join the Trainer's own (e.g. a
    user's reporter, or a benchmark's recorder).

    Under torchrun / ``accelerate launch`` every process trains (DDP, or FSDP2 with sharded parameters) and scores;
    only global rank 0 checks and writes the run folder. Under FSDP the adapter is gathered whole for the ranks, the
    checkpoints and the export, so the run folder is a one-process run's.
    """
    family, method = task_family(cfg.task), get_method(cfg.method)
    cfg = with_default_model(cfg)
    sharded = check_fsdp(cfg.fsdp, cfg.budgeted)
    main = is_main_process()
    out = prepare_output(cfg, resume) if main else Path(cfg.output_dir)
    transformers.set_seed(cfg.seed)
    data, tokenizer, train_set, dev, model = family.load(cfg)
    head_params = sum(p.numel() for name in family.heads(model) for p in model.get_submodule(name).parameters())

    world_size = int(os.environ.get("WORLD_SIZE", "1"))  # the per-device batch is cfg.batch_size
    steps_per_epoch = math.ceil(len(train_set) / (cfg.batch_size * world_size))
    total_steps = math.ceil(steps_per_epoch * cfg.epochs)
    collator = family.collator(tokenizer)
    model, optimizer = method.build(
        cfg,
        model,
        task_type=family.task_type,
        heads=family.heads(model),
        total_steps=total_steps,
        gate_bank=not sharded,
        batches=lambda: _batches(train_set, cfg.batch_size, collator),
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    checkpoints = out / "checkpoints"
    main_split = data.spec.validation_splits[0]
    hooks = StepHooks(model, method)
    trainer = SoraTrainer(
        model=model,
        args=training_args(cfg, checkpoints, data.spec.primary_metric, evaluate=True),
        train_dataset=train_set,
        eval_dataset=dev[main_split],
        data_collator=collator,
        processing_class=tokenizer,
        compute_metrics=family.trainer_metrics(data.spec, main_split),
        optimizers=(optimizer, None),
        callbacks=[hooks, *([SoraCallback()] if method.gated else []), *(callbacks or [])],
    )
    if sharded:
        trainer.shard()
    if main:  # the run folder's marker once the run is set up: a run that cannot start leaves nothing behind
        out.mkdir(parents=True, exist_ok=True)
        _io.write_json(out / RUN_MARKER, dataclasses.asdict(cfg))
    last = last_complete_checkpoint(checkpoints, remove_incomplete=main) if resume else None
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=last)
    train_seconds = time.perf_counter() - started
    history = trainer.state.log_history
    if main:
        _io.write_text(out / "train_log.jsonl", "".join(json.dumps(row) + "\n" for row in history))
    eval_rows = [row for row in history if f"eval_{data.spec.primary_metric}" in row]
    eval_final = _strip_eval(eval_rows[-1]) if eval_rows else {}

    model = trainer.model
    if sharded:
        unshard_adapter(model)  # every process: collectives
    target = budget_target(optimizer)
    ranks = method.ranks(model)
    gates = gate_vectors(model, optimizer)
    if gates is not None and main:
        initial, final = gates
        _io.atomic_write(out / GATES_FILE, lambda tmp: save_file({"initial": initial, "final": final}, tmp))
    model = method.finish(model)
    nonzero = method.nonzero_params(model)
    adapter = export(model, tokenizer, data.spec, cfg, out / "adapter") if main else out / "adapter"
    trainer.accelerator.wait_for_everyone()  # every process scores the exported files (a distributed predict)
    # score the exported files on every dev split, so `sora eval` reproduces these numbers
    options = EvalOptions(
        data=data, batch_size=eval_batch_size(cfg), max_eval_samples=cfg.max_eval_samples, seed=cfg.seed
    )
    scores = family.evaluate(adapter, options)
    metrics = {
        "task": cfg.task,
        "method": cfg.method,
        "model": cfg.model,
        "seed": cfg.seed,
        "hyperparameters": cfg.hyperparameters(),
        "primary_metric": data.spec.primary_metric,
        "eval": scores,
        "eval_final": eval_final,
        "train_seconds": round(train_seconds, 3),
        "seconds_per_epoch": round(hooks.step_seconds / cfg.epochs, 3),
        "trainable_params": trainable,
        "nonzero_params": nonzero,
        "target_params": target,
        "head_params": head_params,
        "baseline": family.baseline(data.spec, train_set["labels"], dev[main_split]["labels"], main_split),
        "ranks": ranks,
        "allocation": None if gates is None else init_overlap(*gates),
        "train_samples": len(train_set),
        "best_checkpoint": trainer.state.best_model_checkpoint,
    }
    if main:
        r_max = method.max_rank(cfg.r)
        if r_max is not None and ranks:  # a LoRA at another run's ranks (--rank-pattern-from) may go above --r
            r_max = max(r_max, *ranks.values())
        _write_ranks(out, ranks, r_max, cfg.method)
        _io.write_json(out / "metrics.json", metrics)
    return metrics


def _batches(dataset: Any, batch_size: int, collator: Any) -> Any:
    """The training set in batches of the model's inputs, in order (what a method reads before training: EVA)."""
    from torch.utils.data import DataLoader

    inputs = [c for c in ("input_ids", "attention_mask", "token_type_ids", "labels") if c in dataset.column_names]
    return DataLoader(
        dataset.select_columns(inputs), batch_size=batch_size, collate_fn=lambda rows: dict(collator(rows))
    )


def summary_line(metrics: dict[str, Any]) -> str:
    """One line a person reads: the dev score against the constant prediction, and what SoRA kept."""
    metric = metrics["primary_metric"]

    def shown(value: float) -> str:  # the GLUE metrics in percent, the causal-LM loss in nats per trained token
        return f"{value:.3f}" if metric == "loss" else f"{100 * value:.1f}"

    line = (
        f"{metrics['method']} on {metrics['task']}: dev {metric} {shown(metrics['eval'][metric])} "
        f"(constant prediction {shown(metrics['baseline'][metric])})"
    )
    if get_method(metrics["method"]).gated:
        live, total = sum(metrics["ranks"].values()), metrics["hyperparameters"]["r"] * len(metrics["ranks"])
        line += f"; {live}/{total} ranks live, {total - live} pruned"
        if metrics.get("allocation") and live < total:
            overlap, chance = metrics["allocation"]["overlap"], metrics["allocation"]["chance"]
            line += f" ({100 * overlap:.0f}% among the largest initial gates, chance {100 * chance:.0f}%)"
    return line + f"; adapter {metrics['nonzero_params']:,} parameters, head {metrics['head_params']:,}"


def _strip_eval(row: dict[str, float]) -> dict[str, float]:
    skip = {"eval_loss", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second"}
    return {k.removeprefix("eval_"): v for k, v in row.items() if k.startswith("eval_") and k not in skip}


def _write_ranks(out: Path, ranks: dict[str, int], r_max: int | None, method: str) -> None:
    _io.write_json(out / "ranks.json", {"r_max": r_max, "method": method, "ranks": ranks})
    if ranks:
        from .analysis import plot_rank_heatmap

        plot_rank_heatmap(ranks, r_max, out / "ranks.png", title=f"{method}: rank of every module")


def evaluate_adapter(adapter: str | Path, **options: Any) -> dict[str, float]:
    """Score an exported adapter (or full model) as its task family does (``sora eval``).

    ``options`` are :class:`sora.tasks.EvalOptions`' fields. ``max_eval_samples``, ``seed`` and ``batch_size``
    default to the run's own, so the scores are those of the examples the run scored, in the same batches: the
    numbers of ``metrics.json``'s ``eval``. So do ``dataset``, ``dataset_config`` and ``validation_split`` of a
    ``--dataset`` run, unless a ``validation_file`` is given.
    """
    adapter = Path(adapter)
    if not adapter.is_dir():
        raise SoraError(f"{adapter}: no such adapter folder")
    run = saved_task(adapter)
    earlier = {"max_eval_samples": None, "seed": 42, "batch_size": 64}  # adapters written before these were saved
    for name, value in earlier.items():
        if options.get(name) is None:
            options[name] = run.get(name, value)
    if run.get("dataset") and options.get("dataset") is None and options.get("validation_file") is None:
        for name, value in run["dataset"].items():  # a --dataset run: its dev split, unless told otherwise
            if options.get(name) is None:
                options[name] = value
    if options.get("dataset") is None and (options.get("dataset_config") or options.get("validation_split")):
        raise SoraError("--dataset-config and --validation-split choose from a --dataset: give one")
    return task_family(run["spec"]["name"]).evaluate(adapter, EvalOptions(**options))
