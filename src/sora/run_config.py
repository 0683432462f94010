"""A run's settings: ``TrainConfig``, saved as ``run_config.json`` in the run folder."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from .errors import SoraError
from .methods import get_method, names, rank_pattern_from


@dataclass
class TrainConfig:
    """Everything a run depends on; saved as ``run_config.json`` in the run folder.

    SoRA's defaults: the gates take Adam steps and the paper's threshold ``tau = xi * lr_t``, with ``xi = 0.5``.
    An Adam step moves a gate by at most about ``lr_t``, so a gate survives while its gradient is consistent enough
    to outpull half a step per step, and noise-driven gates die, however long the run. (A constant ``tau`` larger
    than the Adam step, e.g. 5e-3 at lr 1e-3, prunes about half the ranks in 128 steps but kills every rank in
    runs of ~750 steps or more, whatever the gradients say: BENCHMARKS.md.) Gates start N(0, 1) as in the authors'
    code, so small gates are pruned first.

    With a sparsity budget (``target_ratio`` / ``target_params``) the defaults let the data choose the ranks instead:
    gates start constant (``gate_init`` 1.0) and the budget's top-up ranks by contribution (``budget_score``
    "contribution"). N(0, 1) gates would decide the survivors by their initial size (BENCHMARKS.md, Allocation);
    ``gate_init="randn", budget_score="gate"`` is the paper's behaviour.

    ``model`` None means the task family's embedded default, filled in when the run starts (``sora.train.train``).
    """

    task: str
    output_dir: str
    method: str = "sora"
    model: str | None = None
    data_dir: str | None = None
    train_file: str | None = None
    validation_file: str | None = None
    dataset: str | None = None  # instead of the files: a datasets folder, file set or hub name (sora.dataset_input)
    dataset_config: str | None = None  # --dataset: the hub dataset's configuration
    train_split: str = "train"  # --dataset: the splits to train on and to score
    validation_split: str = "validation"
    text_columns: list[str] | None = None
    label_column: str = "label"
    r: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.0
    xi: float = 0.5  # SoRA's gate defaults: see the docstring
    gate_lr: float | None = None
    gate_update: str = "adamw"
    threshold: str = "paper"
    gate_init: float | str | None = None  # None: "randn" (the paper), or BUDGET_GATE_INIT with a budget
    gate_seed: int | None = None  # SoRA: the randn gates' own seed (None: the run's --seed stream)
    lr: float | None = None
    epochs: float = 3.0
    batch_size: int = 32
    max_seq_length: int = 128
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 42
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    eval_steps: int | None = None
    save_steps: int | None = None
    logging_steps: int = 10
    report_to: str = "none"
    bf16: bool = False
    fp16: bool = False
    gradient_checkpointing: bool = False
    torch_compile: bool = False
    load_in_4bit: bool = False  # QLoRA: the base in NF4 (sora, lora, adalora; sora.quant)
    fsdp: bool = False  # shard the parameters over the processes (FSDP2; sora.sharding)
    generate_eval: int | None = None  # causal-lm: greedy generations for this many validation prompts
    target_ratio: float | None = None  # SoRA: a sparsity budget (sora.SparsityBudget) instead of a fixed xi's result
    target_params: int | None = None
    budget_score: str | None = None  # SoRA budget: what its top-up ranks by (sora.budget.SCORES; None: contribution)
    rank_pattern_from: str | None = (
        None  # LoRA: the per-module ranks of this run folder (sora.methods.rank_pattern_from)
    )

    def __post_init__(self) -> None:
        method = get_method(self.method)
        if self.lr is None:
            self.lr = method.default_lr
        for name in ("lr", "epochs", "batch_size", "max_seq_length", "r", "lora_alpha", "logging_steps"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise SoraError(f"{name} must be > 0, got {value!r}")
        for name in ("eval_steps", "save_steps", "max_train_samples", "max_eval_samples", "gate_lr", "generate_eval"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise SoraError(f"{name} must be > 0, got {value!r}")
        if self.dataset is not None and (self.train_file is not None or self.validation_file is not None):
            raise SoraError("--dataset replaces --train-file and --validation-file: give one or the other")
        if self.dataset is None and (
            self.dataset_config is not None or (self.train_split, self.validation_split) != ("train", "validation")
        ):
            raise SoraError("--dataset-config, --train-split and --validation-split choose from a --dataset: give one")
        for name in ("dataset", "dataset_config", "train_split", "validation_split"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and value.strip()):
                raise SoraError(f"{name} must be a non-empty name, got {value!r}")
        if not (math.isfinite(self.xi) and self.xi >= 0):
            raise SoraError(f"xi must be a finite number >= 0, got {self.xi!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise SoraError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise SoraError("weight_decay and max_grad_norm must be >= 0")
        from transformers.integrations import INTEGRATION_TO_CALLBACK  # here: the sora command parses without torch

        reporters = ("none", "all", *sorted(INTEGRATION_TO_CALLBACK))  # what the Trainer's report_to takes
        if self.report_to not in reporters:
            raise SoraError(f"unknown --report-to {self.report_to!r}; known: {', '.join(reporters)}")
        if self.budgeted:
            if not method.budget:
                raise SoraError(
                    f"--target-ratio / --target-params are for --method {' or '.join(names('budget'))}, "
                    f"not {self.method!r}"
                )
            from .budget import BUDGET_GATE_INIT, SparsityBudget

            self.gate_init = BUDGET_GATE_INIT if self.gate_init is None else self.gate_init
            self.budget_score = self.budget_score or "contribution"
            SparsityBudget(self.target_ratio, self.target_params, score=self.budget_score)  # checks the values
        elif self.budget_score is not None:
            raise SoraError("--budget-score ranks a budget's top-up: it needs --target-ratio or --target-params")
        if self.gate_init is None:
            self.gate_init = "randn"
        if self.rank_pattern_from is not None and not method.rank_pattern:
            raise SoraError(
                f"--rank-pattern-from is for --method {' or '.join(names('rank_pattern'))}, not {self.method!r}"
            )
        if self.rank_pattern_from is not None:
            rank_pattern_from(self.rank_pattern_from, self.r, self.lora_alpha)  # reads and checks the ranks
        if self.fsdp and not method.fsdp:
            raise SoraError(f"--fsdp trains --method {' or '.join(names('fsdp'))}, not {self.method!r}")
        if self.load_in_4bit and not method.load_in_4bit:
            raise SoraError(
                f"--load-in-4bit freezes the base in 4 bits and trains an adapter: --method {self.method} trains base "
                f"weights; use {', '.join(names('load_in_4bit'))}"
            )
        if self.load_in_4bit:
            from .quant import check_4bit

            check_4bit(self.fsdp)

    @property
    def budgeted(self) -> bool:
        """Whether SoRA trains to a sparsity budget (``target_ratio`` or ``target_params``)."""
        return self.target_ratio is not None or self.target_params is not None

    def hyperparameters(self) -> dict[str, Any]:
        skip = {"task", "output_dir", "method", "model", "data_dir", "train_file", "validation_file", "fsdp"}
        skip |= {"dataset", "dataset_config", "train_split", "validation_split"}  # where the data come from
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
