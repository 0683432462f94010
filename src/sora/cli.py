"""The ``sora`` command: train, eval, schedule, ranks, report.

Every failure the user can fix is one line on stderr (``sora: error: ...``) and a non-zero exit, never a traceback.
An unexpected failure (a bug) is one line too, unless ``sora --debug`` or ``SORA_DEBUG=1`` asks for its traceback.

Parsing the arguments imports neither torch nor transformers: each command imports what it runs, so ``sora --help``
and a mistyped option answer at once.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import SoraError

if TYPE_CHECKING:
    from .run_config import TrainConfig

DEBUG_ENV = "SORA_DEBUG"  # set to 1: an unexpected error shows its traceback (as `sora --debug`)


class _HelpFormatter(argparse.HelpFormatter):
    """``--help`` shows each option's default once: appended where the help text does not say it already, and
    not at all where there is none (an unset option, a switch)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        shown = action.default is not None and action.default is not False and action.default != argparse.SUPPRESS
        if action.option_strings and shown and "default" not in text:
            text = f"{text} (default: %(default)s)".strip()
        return text

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help:  # argparse shows no help line without a help text, so the default would not show
            action.help = self._get_help_string(action)
        return super()._format_action(action)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # one line, not usage + message; main() adds the "sora: error: "
        raise SoraError(message)


def _float_or_str(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value


def _numbers(flag: str, text: str, kind: str) -> list[float]:
    """A comma-separated list of numbers (``--xi-list``, ``--target-list``); ``kind`` says what, with an example."""
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise SoraError(f"{flag} takes comma-separated {kind}, got {text!r}") from None


def _add_train_options(p: argparse.ArgumentParser) -> None:
    from .methods import METHODS
    from .run_config import TrainConfig

    d = {f.name: f.default for f in fields(TrainConfig)}  # one source of defaults: TrainConfig

    p.add_argument(
        "--task", required=True, help="cola sst2 mrpc qqp stsb mnli qnli rte wnli, custom, or causal-lm (decoders)"
    )
    p.add_argument("--output-dir", required=True, help="the run folder (new, empty, or this run's own with --resume)")
    p.add_argument("--method", default=d["method"], choices=list(METHODS))
    p.add_argument(
        "--model",
        default=None,
        help="local folder, hub name or (causal-lm) .gguf file (default: the embedded MiniLM-L6; causal-lm: SmolLM2)",
    )
    p.add_argument("--data-dir", default=None, help="folder of GLUE TSVs (default: $GLUE_DIR, else the hub)")
    p.add_argument("--train-file", default=None, help="custom and causal-lm tasks: CSV or JSONL")
    p.add_argument("--validation-file", default=None, help="custom and causal-lm tasks: CSV or JSONL")
    p.add_argument(
        "--dataset",
        default=None,
        metavar="NAME_OR_DIR",
        help="custom and causal-lm tasks, instead of the files: a save_to_disk folder, a folder or glob of parquet, "
        "JSON or CSV files, or a hub dataset",
    )
    p.add_argument("--dataset-config", default=None, help="--dataset: the hub dataset's configuration")
    p.add_argument("--train-split", default=d["train_split"], help="--dataset: the split to train on")
    p.add_argument("--validation-split", default=d["validation_split"], help="--dataset: the split to score")
    p.add_argument("--text-columns", default=None, help="custom task: a or a,b")
    p.add_argument("--label-column", default=d["label_column"])
    p.add_argument(
        "--r", "--lora-r", dest="r", type=int, default=d["r"], help="r_max (SoRA), r (LoRA), target r (AdaLoRA)"
    )
    p.add_argument("--lora-alpha", type=float, default=d["lora_alpha"])
    p.add_argument("--lora-dropout", type=float, default=d["lora_dropout"])
    p.add_argument(
        "--xi",
        type=float,
        default=d["xi"],
        help="SoRA sparsity: tau = xi*lr (paper) or xi (constant)",
    )
    p.add_argument("--gate-lr", type=float, default=None, help="SoRA gate learning rate (default: --lr)")
    p.add_argument("--gate-update", default=d["gate_update"], choices=("adamw", "sgd"))
    p.add_argument("--threshold", default=d["threshold"], choices=("paper", "constant"))
    p.add_argument(
        "--gate-init",
        type=_float_or_str,
        default=None,
        help="a number, or randn (default: randn; 1.0 with a budget: --target-ratio, --target-params, --target-list)",
    )
    p.add_argument("--gate-seed", type=int, default=None, help="seed of the randn gates alone (default: --seed's)")
    lrs = ", ".join(f"{name} {method.default_lr:g}" for name, method in METHODS.items())
    p.add_argument("--lr", type=float, default=None, help=f"default per method: {lrs}")
    p.add_argument("--epochs", type=float, default=d["epochs"])
    p.add_argument("--batch-size", type=int, default=d["batch_size"])
    p.add_argument("--max-seq-length", type=int, default=d["max_seq_length"])
    p.add_argument("--warmup-ratio", type=float, default=d["warmup_ratio"])
    p.add_argument("--weight-decay", type=float, default=d["weight_decay"])
    p.add_argument("--max-grad-norm", type=float, default=d["max_grad_norm"])
    p.add_argument("--seed", type=int, default=d["seed"])
    p.add_argument("--max-train-samples", type=int, default=None)
    p.add_argument("--max-eval-samples", type=int, default=None)
    p.add_argument("--eval-steps", type=int, default=None, help="default: evaluate every epoch")
    p.add_argument("--save-steps", type=int, default=None, help="default: a checkpoint every epoch")
    p.add_argument("--logging-steps", type=int, default=d["logging_steps"])
    p.add_argument("--report-to", default=d["report_to"], help="the Trainer's reporters: none, tensorboard, wandb, all")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--fp16", action="store_true")
    p.add_argument("--torch-compile", action="store_true", help="compile the model with torch.compile")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in the backward pass")
    p.add_argument(
        "--load-in-4bit", action="store_true", help="QLoRA: the base in NF4 (sora, lora, adalora; needs bitsandbytes)"
    )
    p.add_argument(
        "--fsdp", action="store_true", help="shard the parameters over the processes (FSDP2; torchrun or accelerate)"
    )
    p.add_argument(
        "--generate-eval", type=int, default=None, help="causal-lm: greedy generations for N validation prompts"
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --output-dir from its last checkpoint")


def _train_config(args: argparse.Namespace):
    from .run_config import TrainConfig

    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    if values.get("text_columns"):
        values["text_columns"] = values["text_columns"].split(",")
    return TrainConfig(**values)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sora", description="SoRA: Sparse Low-rank Adaptation on PEFT's LoRA.")
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"an unexpected error shows its full traceback instead of one line (also: {DEBUG_ENV}=1)",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="fine-tune with SoRA or a baseline; write a run folder")
    _add_train_options(train)
    budget = train.add_mutually_exclusive_group()
    budget.add_argument(
        "--target-ratio", type=float, default=None, help="SoRA: keep this fraction of the r_max adapter (steers xi)"
    )
    budget.add_argument(
        "--target-params", type=int, default=None, help="SoRA: keep this many non-zero adapter parameters (steers xi)"
    )
    train.add_argument(
        "--rank-pattern-from",
        default=None,
        metavar="RUN",
        help="LoRA: train the per-module ranks a run found (its folder's ranks.json, or its metrics.json), at the "
        "scale lora_alpha / r",
    )
    train.add_argument(
        "--budget-score",
        default=None,
        choices=("gate", "contribution"),
        help="what a budget's top-up ranks the ranks by: |g_i| (the paper's), or |g_i|·|B_i|·|A_i| (default)",
    )

    ev = sub.add_parser("eval", help="score an exported adapter on its task's dev set")
    ev.add_argument("--adapter", required=True)
    ev.add_argument("--task", default=None)
    ev.add_argument("--data-dir", default=None)
    ev.add_argument("--validation-file", default=None, help="custom-task and causal-lm adapters: their dev file")
    ev.add_argument(
        "--dataset", default=None, metavar="NAME_OR_DIR", help="custom-task and causal-lm adapters (default: the run's)"
    )
    ev.add_argument("--dataset-config", default=None, help="--dataset: the hub dataset's configuration")
    ev.add_argument("--validation-split", default=None, help="the dataset's split to score (default: the run's)")
    ev.add_argument("--model", default=None, help="the base model (default: the one the adapter names)")
    ev.add_argument(
        "--load-in-4bit",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the base in NF4, or (--no-load-in-4bit) in full precision (default: as the run trained)",
    )
    ev.add_argument("--batch-size", type=int, default=None, help="default: the run's (twice its training batch)")
    ev.add_argument(
        "--max-eval-samples", type=int, default=None, help="score this many dev examples (default: as the run did)"
    )
    ev.add_argument("--seed", type=int, default=None, help="the dev subset's shuffle (default: the run's --seed)")
    ev.add_argument("--output", default=None, help="also write the metrics JSON to this file")

    sched = sub.add_parser("schedule", help="the sparsifying scheduler (Algorithm 1): raise xi stage by stage")
    _add_train_options(sched)
    sched.add_argument("--xi-schedule", default="linear", choices=("linear", "log_linear", "exp_linear"))
    sched.add_argument("--xi-start", type=float, default=None, help="xi of stage 1 (default: --xi)")
    sched.add_argument("--xi-max", type=float, default=None)
    sched.add_argument("--xi-list", default=None, help="explicit comma-separated xi values, instead of a schedule")
    sched.add_argument(
        "--target-list",
        default=None,
        help="budgets instead of xis: comma-separated fractions of the r_max adapter, one per stage (e.g. 0.9,0.5)",
    )
    sched.add_argument("--stages", type=int, default=5)
    sched.add_argument("--epochs-per-stage", type=float, default=1.0)
    sched.add_argument(
        "--pick-within",
        type=float,
        default=None,
        help="at the end, name the smallest stage whose dev score is within this many points of the best (default 1; "
        "for causal-lm: percent of the best dev loss)",
    )

    ranks = sub.add_parser("ranks", help="rank heatmap and per-layer sparsity of a run folder")
    ranks.add_argument("run_dir")

    export = sub.add_parser("export", help="rewrite a run's adapter for LLM servers")
    export.add_argument("run_dir", help="a run folder (its adapter/) or an adapter folder")
    form = export.add_mutually_exclusive_group(required=True)
    form.add_argument(
        "--uniform-rank",
        action="store_true",
        help="pad every module with zero ranks to the largest live rank: one r and lora_alpha, no rank_pattern",
    )
    form.add_argument(
        "--gguf",
        action="store_true",
        help="a llama.cpp LoRA GGUF (llama-cli --lora): per-module ranks, each module's scale folded into B",
    )
    export.add_argument(
        "--output", default=None, help="default: RUN_DIR/adapter-uniform-rank, or RUN_DIR/adapter.gguf with --gguf"
    )
    export.add_argument(
        "--model", default=None, help="--gguf: the base model folder or hub name (default: the one the adapter names)"
    )

    report = sub.add_parser("report", help="one HTML + Markdown page comparing run folders")
    report.add_argument("run_dirs", nargs="+")
    report.add_argument("--output", default="report.html")
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.command == "train":
        cfg = _train_config(args)  # a bad value is one line before torch and the Trainer load
        from .train import summary_line, train

        metrics = train(cfg, resume=args.resume)
        print(summary_line(metrics), file=sys.stderr)
        print(
            json.dumps(
                {
                    "output_dir": args.output_dir,
                    "eval": metrics["eval"],
                    "ranks": sum(metrics["ranks"].values()),
                    "nonzero_params": metrics["nonzero_params"],
                }
            )
        )
    elif args.command == "eval":
        from . import _io
        from .train import evaluate_adapter

        scores = evaluate_adapter(
            args.adapter,
            task=args.task,
            data_dir=args.data_dir,
            validation_file=args.validation_file,
            dataset=args.dataset,
            dataset_config=args.dataset_config,
            validation_split=args.validation_split,
            batch_size=args.batch_size,
            max_eval_samples=args.max_eval_samples,
            seed=args.seed,
            model_name=args.model,
            load_in_4bit=args.load_in_4bit,
        )
        if args.output:
            _io.write_json(args.output, scores)
        print(json.dumps(scores))
    elif args.command == "schedule":
        from .schedule import PICK_WITHIN, pick_stage, run_schedule, xi_values

        within = PICK_WITHIN if args.pick_within is None else args.pick_within
        if not (math.isfinite(within) and within >= 0):  # before training, not after
            raise SoraError(f"--pick-within must be a finite number >= 0, got {within!r}")
        targets = None
        if args.target_list:
            targets = _numbers("--target-list", args.target_list, "fractions such as 0.9,0.7,0.5")
        if targets and args.xi_list:
            raise SoraError("give --target-list or --xi-list, not both")
        if targets and args.gate_init is None:  # a budget's gates start equal, as with sora train --target-ratio
            from .budget import BUDGET_GATE_INIT

            args.gate_init = BUDGET_GATE_INIT
        cfg = _train_config(args)
        if targets:
            xis = [args.xi] * len(targets)  # each stage's budget steers xi from here
        elif args.xi_list:
            xis = _numbers("--xi-list", args.xi_list, "xi values such as 0.1,0.3,0.5")
        else:
            xis = xi_values(
                args.xi_schedule, args.xi_start if args.xi_start is not None else args.xi, args.xi_max, args.stages
            )
        schedule = run_schedule(cfg, xis, args.epochs_per_stage, resume=args.resume, targets=targets)
        pick = pick_stage(schedule, within)
        metric = schedule["primary_metric"]
        value = pick["dev"][metric]
        adapter = Path(args.output_dir) / "adapters" / f"stage_{pick['stage']}"
        print(
            f"sora schedule on {cfg.task}: stage {pick['stage']} of {len(schedule['stages'])} is the smallest within "
            f"{within:g} {'%' if metric == 'loss' else 'point'} of the best dev {metric} "
            f"({f'{value:.3f}' if metric == 'loss' else f'{100 * value:.1f}'}): {pick['nonzero_params']:,} adapter "
            f"parameters, {pick['live_ranks']} ranks live; its adapter: {adapter}"
        )
        print(json.dumps({"output_dir": args.output_dir, "stages": len(schedule["stages"]), "pick": pick["stage"],
                          "adapter": str(adapter)}))  # fmt: skip
    elif args.command == "ranks":
        from .analysis import analyze_ranks

        result = analyze_ranks(args.run_dir)
        print(json.dumps({"layer_sparsity": result["layer_sparsity"]}))
    elif args.command == "export":
        if args.gguf:
            from .gguf import export_gguf

            print(export_gguf(args.run_dir, args.output, base_model=args.model))
        else:
            from .export import uniform_rank

            if args.model is not None:
                raise SoraError("--model is for --gguf: --uniform-rank keeps the adapter's base model")
            print(uniform_rank(args.run_dir, args.output))
    else:
        from .analysis import write_report

        print(write_report(args.run_dirs, args.output))
    return 0


def _debugging(args: argparse.Namespace | None) -> bool:
    """Whether an unexpected error shows its traceback: ``sora --debug``, or ``SORA_DEBUG`` set to 1 (or true, yes)."""
    if args is not None and args.debug:
        return True
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``sora`` and ``python -m sora``; returns the exit status.

    An unexpected exception (not a :class:`SoraError`) is one line and exit status 1, or, with ``sora --debug`` or
    ``SORA_DEBUG=1``, raised again with its traceback.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = None
    try:
        args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
        return _run(args)
    except SoraError as e:
        print(f"sora: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sora: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # an unforeseen failure: one line and its kind, or its traceback when debugging
        if _debugging(args):
            raise
        text = str(e).strip()
        print(
            f"sora: error: {type(e).__name__}: {text.splitlines()[0] if text else ''} "
            f"(sora --debug or {DEBUG_ENV}=1 shows the traceback)",
            file=sys.stderr,
        )
        return 1


def train_argv(cfg: TrainConfig) -> list[str]:
    """The ``sora train`` arguments that reproduce ``cfg`` (:func:`config_from_argv` reads them back): ``--task`` and
    ``--method``, then, in ``TrainConfig``'s field order, each option whose value is not its field's default (the
    learning rate's: the method's). Settings that ``TrainConfig`` resolves when it is built are always stated: the
    gate init (N(0, 1), or 1.0 with a budget) and a budget's score."""
    from .methods import get_method
    from .run_config import TrainConfig

    defaults = {f.name: f.default for f in fields(TrainConfig)} | {"lr": get_method(cfg.method).default_lr}
    argv = ["--task", cfg.task, "--method", cfg.method]
    for f in fields(TrainConfig):
        value = getattr(cfg, f.name)
        if f.name in ("task", "method") or value == defaults[f.name]:
            continue
        flag = f"--{f.name.replace('_', '-')}"
        if isinstance(value, bool):
            argv.append(flag)
        elif isinstance(value, list):
            argv += [flag, ",".join(value)]
        else:
            argv += [flag, _number(value) if isinstance(value, float) else str(value)]
    return argv


def config_from_argv(argv: list[str]) -> TrainConfig:
    """The ``TrainConfig`` that ``sora train`` builds from ``argv`` (its arguments, without ``sora train``); the
    inverse of :func:`train_argv`. A bad argument raises :class:`SoraError`, one line."""
    return _train_config(_parser().parse_args(["train", *argv]))


def _number(value: float) -> str:
    """``value`` as short as it reads back exactly: ``%g`` (2, 0.0001, 1e-05), else ``repr``."""
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


if __name__ == "__main__":
    sys.exit(main())
