"""The registry of training methods (``sora train --method``): SoRA and its baselines, one object each.

A :class:`Method` holds everything a run does differently for its method: the default learning rate, how the model
and optimizer are built, how the adapter's ranks and non-zero parameters are read, the hook after each optimizer
step, what is done to the model before its export, and what the method supports (a 4-bit base, FSDP, a sparsity
budget, the sparsifying scheduler, decoders). The run machinery (``sora.train``, ``sora.trainer``, the CLI, the
benchmarks) asks the method and never compares its name. A new method is a subclass and one
:func:`register_method` call, from the package or from a user's own code.

This module imports torch, PEFT and transformers only inside the methods, so the CLI reads the registry (names,
default learning rates) without loading them.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import SoraError

if TYPE_CHECKING:
    import torch


class Method:
    """A training method. Subclasses set ``name`` and ``default_lr``, implement :meth:`build`, and override what
    differs from a method that trains some of the model's own parameters."""

    name: str
    default_lr: float
    load_in_4bit: bool = False  # trains an adapter on a frozen base, which may be 4-bit (--load-in-4bit)
    fsdp: bool = False  # trains under sora train --fsdp (sharded parameters)
    budget: bool = False  # takes a sparsity budget (--target-ratio / --target-params)
    schedule: bool = False  # trains under the sparsifying scheduler (sora schedule)
    decoders: bool = True  # trains the causal-LM family's decoders
    rank_pattern: bool = False  # takes another run's per-module ranks (--rank-pattern-from)
    keeps_best: bool = True  # may keep the best dev checkpoint (False: the final model is kept)
    gated: bool = False  # its adapter has SoRA gates: a run adds sora.SoraCallback, its summary reports live ranks

    def build(
        self,
        cfg: Any,
        model: torch.nn.Module,
        *,
        task_type: str,
        heads: list[str],
        total_steps: int,
        gate_bank: bool = True,
    ) -> tuple[torch.nn.Module, Any]:
        """Wrap ``model`` for the run ``cfg`` (a :class:`sora.run_config.TrainConfig`) of ``total_steps`` optimizer
        steps; returns the model and its optimizer (None: the Trainer's AdamW). ``task_type``: PEFT's; ``heads``: the
        modules every method trains in full (the task family's); ``gate_bank=False`` keeps a gate parameter per
        module (FSDP shards each with its layer)."""
        raise NotImplementedError

    def max_rank(self, r: int) -> int | None:
        """The largest rank a module can have at ``--r r`` (None: the method has no ranks)."""
        return None

    def ranks(self, model: torch.nn.Module) -> dict[str, int]:
        """Module name -> the rank of its adapter ({}: no ranks)."""
        return {}

    def nonzero_params(self, model: torch.nn.Module) -> int:
        """What the exported adapter holds: here, every parameter that trains."""
        return sum(p.numel() for p in model.parameters() if p.requires_grad)

    def on_optimizer_step(self, model: torch.nn.Module, step: int) -> None:
        """After optimizer step ``step`` (1-based), before the gradients are cleared; a SoraError stops the run."""

    def finish(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model to export at the end of training."""
        return model


def _peft_options(cfg: Any, model: torch.nn.Module, task_type: str, heads: list[str]) -> dict[str, Any]:
    """The LoRA options every adapter method shares: the targets, alpha, dropout, the task type and the heads."""
    from .config import SoraConfig

    return {
        "target_modules": SoraConfig(r_max=cfg.r).resolve_target_modules(model.config.model_type),
        "lora_alpha": cfg.lora_alpha,
        "lora_dropout": cfg.lora_dropout,
        "task_type": task_type,
        "modules_to_save": heads,
    }


class _LoraRanks(Method):
    """An adapter of LoRA modules (SoRA's gated ones, or LoRA's): ranks and sizes read from its modules."""

    load_in_4bit = True
    fsdp = True

    def max_rank(self, r: int) -> int:
        return r

    def ranks(self, model: torch.nn.Module) -> dict[str, int]:
        from .model import gate_ranks

        return gate_ranks(model)

    def nonzero_params(self, model: torch.nn.Module) -> int:
        from .model import count_parameters

        return count_parameters(model)["nonzero"]


class Sora(_LoraRanks):
    """SoRA: LoRA of rank r_max with a gate per module, trained by :class:`sora.SoraOptimizer`; pruned at the end.
    Its gate checks, budget steps and log numbers come from :class:`sora.SoraCallback`, as every ``gated`` method's."""

    name = "sora"
    default_lr = 1e-3
    budget = True
    schedule = True
    gated = True

    def build(self, cfg, model, *, task_type, heads, total_steps, gate_bank=True, batches=None):
        from .bank import detach_bank
        from .budget import SparsityBudget
        from .config import SoraConfig
        from .model import get_sora_model
        from .optim import SoraOptimizer

        options = _peft_options(cfg, model, task_type, heads)
        model = get_sora_model(
            model, SoraConfig(r_max=cfg.r, gate_init=cfg.gate_init, gate_seed=cfg.gate_seed, **options)
        )
        if not gate_bank:
            detach_bank(model.get_base_model())
        optimizer = SoraOptimizer(
            model,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            xi=cfg.xi,
            gate_lr=cfg.gate_lr,
            gate_update=cfg.gate_update,
            threshold=cfg.threshold,
        )
        if cfg.budgeted:
            budget = SparsityBudget(cfg.target_ratio, cfg.target_params, score=cfg.budget_score)
            budget.attach(model, optimizer, total_steps)
        return model, optimizer

    def finish(self, model):
        from .prune import prune

        return prune(model)


class Lora(_LoraRanks):
    """LoRA (PEFT's ``LoraConfig``) of rank r in every target module, or (``--rank-pattern-from RUN``) of the ranks
    another run found per module (:func:`rank_pattern_from`)."""

    name = "lora"
    default_lr = 1e-3
    rank_pattern = True

    def build(self, cfg, model, *, task_type, heads, total_steps, gate_bank=True, batches=None):
        from peft import LoraConfig, get_peft_model

        from .model import quiet_peft

        options = _peft_options(cfg, model, task_type, heads)
        if cfg.rank_pattern_from is not None:
            options.update(rank_pattern_from(cfg.rank_pattern_from, cfg.r, cfg.lora_alpha))
        with quiet_peft():
            return get_peft_model(model, LoraConfig(r=cfg.r, **options)), None


def rank_pattern_from(run: str, r: int, lora_alpha: float) -> dict[str, Any]:
    """LoraConfig options for the per-module ranks of a run: ``run`` is its folder (its ``ranks.json``, as ``sora
    train`` writes it) or a JSON file with its ``ranks`` (its ``metrics.json``, a benchmark's result file). The
    modules it kept become the targets, their ranks the ``rank_pattern``, and an ``alpha_pattern`` keeps every
    module's scale at ``lora_alpha / r`` (a SoRA run's pruned adapter: ``lora_alpha / r_max``)."""
    path = Path(run) if Path(run).is_file() else Path(run) / "ranks.json"
    try:
        ranks = json.loads(path.read_text(encoding="utf-8"))["ranks"]
    except FileNotFoundError:
        raise SoraError(
            f"--rank-pattern-from {run}: no ranks.json there (a sora train run folder, or a JSON file of its ranks)"
        ) from None
    except (ValueError, KeyError, TypeError) as e:
        raise SoraError(f"{path}: not a sora train ranks file ({e})") from None
    live = {name: rank for name, rank in ranks.items() if rank > 0}
    if not live:
        raise SoraError(f"{path}: every module has rank 0, so there is no LoRA to train")
    return {
        "target_modules": sorted(live),
        "rank_pattern": {re.escape(name): rank for name, rank in live.items()},
        "alpha_pattern": {re.escape(name): lora_alpha * rank / r for name, rank in live.items()},
    }


class Eva(_LoraRanks):
    """EVA (PEFT's ``init_lora_weights="eva"``, Paischer et al. 2024): before training, an incremental SVD of every
    target module's inputs over the training batches sets A to their top right-singular vectors and redistributes the
    rank budget (``--r`` per module on average, rho at PEFT's default) to the modules whose inputs need it most; then
    plain LoRA training. The adapter is a PEFT LoRA adapter with EVA's ``rank_pattern``. Unit singular vectors along
    the inputs' largest directions give the branch 5-8x LoRA's output at the same rank and scale, so LoRA's rate is
    too large: at 1e-3, r=2 stayed at chance on MRPC and collapsed on STS-B; 2e-4 was its best on both together in the
    search over 1e-4 to 1e-3 (BENCHMARKS.md, "Defaults")."""

    name = "eva"
    default_lr = 2e-4
    load_in_4bit = False  # EVA's SVD hooks support plain linear layers
    fsdp = False
    rho = 2.0  # PEFT's default: a module may get up to rho * r ranks

    def max_rank(self, r: int) -> int:
        return round(self.rho * r)

    def build(self, cfg, model, *, task_type, heads, total_steps, gate_bank=True, batches=None):
        from peft import EvaConfig, LoraConfig, get_peft_model, initialize_lora_eva_weights

        from .model import quiet_peft

        if batches is None:
            raise SoraError("EVA reads the training data before training: build it with batches=")
        # a classifier's labels are one per example, not per token: every token then enters the SVD
        eva = EvaConfig(rho=self.rho, use_label_mask=task_type == "CAUSAL_LM")
        config = LoraConfig(
            r=cfg.r, init_lora_weights="eva", eva_config=eva, **_peft_options(cfg, model, task_type, heads)
        )
        with quiet_peft():
            model = get_peft_model(model, config, low_cpu_mem_usage=True)  # EVA sets A: no init first
        initialize_lora_eva_weights(model, dataloader=batches(), show_progress_bar=True)
        return model, None


class AdaLora(Method):
    """AdaLoRA (PEFT's ``AdaLoraConfig``) with its paper's GLUE recipe: start at 1.5x the target rank, prune between
    10% and 80% of training, orthogonality regulariser weight 0.1. Its adapter starts at zero singular values with
    N(0, 0.02) factors, so in a few epochs it needs a larger rate than LoRA: 5e-3 was its best on MRPC, CoLA and RTE
    together in the search over 1e-3 to 1e-2 (BENCHMARKS.md, "Defaults"). Its checkpoints are saved at the rank
    pattern of their step, which PEFT cannot load back into the reallocated model: the final model is kept."""

    name = "adalora"
    default_lr = 5e-3
    load_in_4bit = True
    keeps_best = False

    def build(self, cfg, model, *, task_type, heads, total_steps, gate_bank=True, batches=None):
        from peft import AdaLoraConfig, get_peft_model

        from .model import quiet_peft

        config = AdaLoraConfig(
            orth_reg_weight=0.1,
            init_r=self.max_rank(cfg.r),
            target_r=cfg.r,
            tinit=int(0.1 * total_steps),
            tfinal=int(0.2 * total_steps),
            deltaT=max(1, total_steps // 50),
            total_step=total_steps,
            **_peft_options(cfg, model, task_type, heads),
        )
        with quiet_peft():
            return get_peft_model(model, config), None

    def max_rank(self, r: int) -> int:
        return math.ceil(1.5 * r)

    def ranks(self, model):
        return {name: rank for name, rank, _ in _adalora_modules(model)}

    def nonzero_params(self, model):
        return sum(rank * size for _, rank, size in _adalora_modules(model))

    def on_optimizer_step(self, model, step):
        model.base_model.update_and_allocate(step - 1)  # needs the gradients, which zero_grad clears right after


def _adalora_modules(model: torch.nn.Module):
    """``(module name, live rank, d_in + d_out)`` of every AdaLoRA module: its non-zero singular values."""
    import torch

    adapter = model.active_adapter
    for name, module in model.get_base_model().named_modules():
        if hasattr(module, "lora_E") and adapter in module.lora_E:
            rank = int(torch.count_nonzero(module.lora_E[adapter]))
            yield name, rank, module.lora_A[adapter].shape[1] + module.lora_B[adapter].shape[0]


class _OwnWeights(Method):
    """A method that trains some of the model's own weights (and the task's heads in full)."""

    def trains(self, name: str) -> bool:
        raise NotImplementedError

    def build(self, cfg, model, *, task_type, heads, total_steps, gate_bank=True, batches=None):
        for name, param in model.named_parameters():
            in_head = any(name.startswith(f"{head}.") for head in heads)
            param.requires_grad_(in_head or self.trains(name))
        return model, None


class Full(_OwnWeights):
    """Full fine-tuning: every weight trains."""

    name = "full"
    default_lr = 5e-5

    def trains(self, name: str) -> bool:
        return True


class BitFit(_OwnWeights):
    """BitFit: the bias terms alone train (and the heads). LLaMA-like decoders have no biases to train."""

    name = "bitfit"
    default_lr = 1e-3
    decoders = False

    def trains(self, name: str) -> bool:
        return name.endswith("bias")


METHODS: dict[str, Method] = {m.name: m for m in (Sora(), Lora(), AdaLora(), Full(), BitFit(), Eva())}

__all__ = ["METHODS", "Method", "get_method", "names", "register_method"]


def register_method(method: Method) -> None:
    """Train with ``method`` under its name (``sora train --method NAME``, ``TrainConfig(method=NAME)``)."""
    METHODS[method.name] = method


def get_method(name: str) -> Method:
    """The method called ``name``; an unknown name is a SoraError naming the known ones."""
    if name not in METHODS:
        raise SoraError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}")
    return METHODS[name]


def names(supporting: str | None = None) -> list[str]:
    """The registered methods' names; with ``supporting`` (a flag such as ``"fsdp"``), those that have it."""
    return [name for name, method in METHODS.items() if supporting is None or getattr(method, supporting)]
