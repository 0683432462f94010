"""SoRA and its baselines on transformers' Trainer: the model and optimizer of each method (``build``), the Trainer
with SoRA's numbers in its logs (``SoraTrainer``), the step hooks and the Trainer's arguments of a run."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from peft import AdaLoraConfig, LoraConfig, PeftModel, get_peft_model
from transformers import Trainer, TrainerCallback, TrainingArguments

from .budget import SparsityBudget, budget_log
from .config import SoraConfig
from .errors import SoraError
from .layer import detach_gate_fold, gate_parameters
from .model import count_parameters, gate_ranks, get_sora_model, load_safetensors, quiet_peft
from .optim import SoraOptimizer, as_sora_optimizer
from .run_config import TrainConfig
from .run_folder import eval_batch_size, last_checkpoint_text
from .sharding import (
    any_everywhere,
    gathered_optimizer_state,
    gathered_state,
    local,
    shard_model,
    shard_optimizer_state,
)
from .tasks.base import TaskFamily


def build(
    cfg: TrainConfig, model: torch.nn.Module, family: TaskFamily, total_steps: int, gate_bank: bool = True
) -> tuple[torch.nn.Module, Any]:
    """Wrap ``model`` for ``cfg.method`` (``family`` names its heads and PEFT task type); returns the model and its
    optimizer (None: the Trainer's AdamW). ``gate_bank=False`` keeps a gate parameter per module (no
    :class:`sora.layer.GateFold`), which sharding (FSDP) needs: each gate is sharded with its layer."""
    targets = SoraConfig(r_max=cfg.r).resolve_target_modules(model.config.model_type)
    heads = family.heads(model)
    common = {
        "lora_alpha": cfg.lora_alpha,
        "lora_dropout": cfg.lora_dropout,
        "task_type": family.task_type,
        "modules_to_save": heads,
    }
    if cfg.method == "sora":
        sora_config = SoraConfig(
            r_max=cfg.r, target_modules=targets, gate_init=cfg.gate_init, gate_seed=cfg.gate_seed, **common
        )
        model = get_sora_model(model, sora_config)
        if not gate_bank:
            detach_gate_fold(model.get_base_model())
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
    if cfg.method == "lora":
        with quiet_peft():
            return get_peft_model(model, LoraConfig(r=cfg.r, target_modules=targets, **common)), None
    if cfg.method == "adalora":
        # AdaLoRA's recipe (its paper's GLUE settings): start at 1.5x the target rank, prune between 10% and 80% of
        # training, orthogonality regulariser weight 0.1.
        config = AdaLoraConfig(
            orth_reg_weight=0.1,
            init_r=max_rank(cfg),
            target_r=cfg.r,
            tinit=int(0.1 * total_steps),
            tfinal=int(0.2 * total_steps),
            deltaT=max(1, total_steps // 50),
            total_step=total_steps,
            target_modules=targets,
            **common,
        )
        with quiet_peft():
            return get_peft_model(model, config), None
    for name, param in model.named_parameters():
        in_head = any(name.startswith(f"{head}.") for head in heads)
        param.requires_grad_(cfg.method == "full" or in_head or name.endswith("bias"))
    return model, None


def max_rank(cfg: TrainConfig) -> int | None:
    """The largest rank a module can have: r_max (SoRA), r (LoRA), AdaLoRA's initial 1.5 x target rank."""
    return {"sora": cfg.r, "lora": cfg.r, "adalora": math.ceil(1.5 * cfg.r)}.get(cfg.method)


def adapter_ranks(model: torch.nn.Module) -> dict[str, int]:
    """Module name -> rank of its adapter: live gates (SoRA), r (LoRA), non-zero singular values (AdaLoRA)."""
    if not isinstance(model, PeftModel):
        return {}
    if isinstance(model.peft_config[model.active_adapter], AdaLoraConfig):
        return {name: rank for name, rank, _ in _adalora_modules(model)}
    return gate_ranks(model)


def _adalora_modules(model: PeftModel):
    """``(module name, live rank, d_in + d_out)`` of every AdaLoRA module: its non-zero singular values."""
    adapter = model.active_adapter
    for name, module in model.get_base_model().named_modules():
        if hasattr(module, "lora_E") and adapter in module.lora_E:
            rank = int(torch.count_nonzero(module.lora_E[adapter]))
            yield name, rank, module.lora_A[adapter].shape[1] + module.lora_B[adapter].shape[0]


def nonzero_params(model: torch.nn.Module, method: str) -> int:
    """What the exported adapter holds: LoRA factors of the live ranks, or the trained weights (full, BitFit)."""
    if method in ("full", "bitfit"):
        return sum(p.numel() for p in model.parameters() if p.requires_grad)
    if method == "adalora":
        return sum(rank * size for _, rank, size in _adalora_modules(model))
    return count_parameters(model)["nonzero"]


class SoraTrainer(Trainer):
    """The Trainer with SoRA's numbers in every log line and a stop on a non-finite loss.

    :meth:`shard` shards the model's parameters (FSDP2, :mod:`sora.sharding`). Its checkpoints then hold what a
    one-process run's hold, gathered on rank 0: the adapter (``adapter_model.safetensors``) and the whole optimizer
    state (``optimizer.pt``), read back into the shards on resume.
    """

    sharded: bool = False

    def shard(self) -> None:
        """Shard the model over the processes (FSDP2) and switch the optimizer to the shards; the Trainer then takes
        the model as sharded at load time (no DDP wrapper, no second sharding)."""
        shard_model(self.model, self.optimizer)
        self.is_distributed_loading_by_transformers = True
        self.sharded = True

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if not self.sharded:
            return super().save_model(output_dir, _internal_call)
        state = gathered_state(self.model)  # every process: collectives
        if self.args.should_save:
            self._save(output_dir or self.args.output_dir, state_dict=state)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if not self.sharded:
            return super()._save_optimizer_and_scheduler(output_dir)
        state = gathered_optimizer_state(self.optimizer)  # every process: collectives
        if self.args.should_save:
            torch.save(state, os.path.join(output_dir, "optimizer.pt"))
            torch.save(self.lr_scheduler.state_dict(), os.path.join(output_dir, "scheduler.pt"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        if not self.sharded:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        self._load_sharded_adapter(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        if not self.sharded:
            return super()._load_best_model()
        self._load_sharded_adapter(self.state.best_model_checkpoint)

    def _load_sharded_adapter(self, checkpoint: str) -> None:
        """Every process reads the whole adapter of ``checkpoint`` and copies its shard of each tensor in."""
        from peft.utils import set_peft_model_state_dict
        from torch.distributed.tensor.experimental import implicit_replication

        weights = load_safetensors(Path(checkpoint) / "adapter_model.safetensors")
        with torch.no_grad(), implicit_replication():
            set_peft_model_state_dict(self.model, weights, adapter_name=self.model.active_adapter)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if not self.sharded or checkpoint is None:
            return super()._load_optimizer_and_scheduler(checkpoint)
        state = torch.load(os.path.join(checkpoint, "optimizer.pt"), map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(shard_optimizer_state(self.optimizer, state))
        self.lr_scheduler.load_state_dict(torch.load(os.path.join(checkpoint, "scheduler.pt"), weights_only=True))

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        optimizer = as_sora_optimizer(self.optimizer)
        if optimizer is not None and "loss" in logs:
            ranks = gate_ranks(self.model)
            logs["xi"] = optimizer.xi
            logs["live_ranks"] = sum(ranks.values())
            logs["nonzero_params"] = count_parameters(self.model)["nonzero"]
            logs.update(budget_log(optimizer))
        super().log(logs, *args, **kwargs)

    def training_step(self, model, inputs, *args: Any, **kwargs: Any) -> torch.Tensor:
        loss = super().training_step(model, inputs, *args, **kwargs)
        if not torch.isfinite(loss).all():
            raise SoraError(
                f"loss is {loss.item()} at step {self.state.global_step + 1}: training stopped; "
                f"{last_checkpoint_text(self.args.output_dir)}"
            )
        return loss


class StepHooks(TrainerCallback):
    """Times the training steps alone (no evaluation, no saving), checks the gates, runs AdaLoRA's allocator."""

    def __init__(self, model: torch.nn.Module, method: str) -> None:
        self.model, self.method = model, method
        self.step_seconds = 0.0
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.method == "adalora":  # needs the gradients, which zero_grad clears right after this
            self.model.base_model.update_and_allocate(state.global_step)
        elif self.method == "sora":
            params = gate_parameters(self.model)
            values = torch.cat([local(g).detach().reshape(-1) for g in params])
            if any_everywhere(not bool(torch.isfinite(values).all()), params):
                raise SoraError(
                    f"a SoRA gate became NaN/Inf at step {state.global_step + 1}: training stopped; "
                    f"{last_checkpoint_text(args.output_dir)}"
                )

    def on_step_end(self, args, state, control, **kwargs):
        self.step_seconds += time.perf_counter() - self._start


def training_args(
    cfg: TrainConfig, output_dir: Path, primary_metric: str, evaluate: bool, **overrides: Any
) -> TrainingArguments:
    """The Trainer's arguments for ``cfg``; ``overrides`` replace any of them (the sparsifying scheduler's stages)."""
    strategy = (
        {"eval_strategy": "steps", "eval_steps": cfg.eval_steps} if cfg.eval_steps else {"eval_strategy": "epoch"}
    )
    save = {"save_strategy": "steps", "save_steps": cfg.save_steps} if cfg.save_steps else {"save_strategy": "epoch"}
    if not evaluate:
        strategy = {"eval_strategy": "no"}
    best = {}
    # AdaLoRA's checkpoints are saved at the rank pattern of their step, which PEFT cannot load back into the
    # reallocated model: for AdaLoRA the final model is kept. Keeping the best also needs saves on eval steps.
    aligned = (cfg.save_steps or 0) % (cfg.eval_steps or 1) == 0 and bool(cfg.save_steps) == bool(cfg.eval_steps)
    # A sparsity budget is reached late in training: its final model is kept too, as it is the one at the budget.
    if evaluate and cfg.method != "adalora" and aligned and not cfg.budgeted:
        best = {
            "load_best_model_at_end": True,
            "metric_for_best_model": primary_metric,
            "greater_is_better": primary_metric != "loss",  # the causal-LM family selects on eval_loss
        }
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=eval_batch_size(cfg),
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_ratio,
        max_grad_norm=cfg.max_grad_norm,
        logging_steps=cfg.logging_steps,
        logging_nan_inf_filter=False,
        # The classifiers' losses are batch means that ignore num_items_in_batch; left True, the Trainer would scale
        # the loss (and the gradient) by the number of processes under DDP.
        average_tokens_across_devices=False,
        save_total_limit=2,
        seed=cfg.seed,
        report_to=cfg.report_to,
        train_sampling_strategy="group_by_length",
        bf16=cfg.bf16,
        fp16=cfg.fp16,
        activation_checkpointing=cfg.gradient_checkpointing,
        torch_compile=cfg.torch_compile,
        use_cpu=not torch.cuda.is_available(),
        **strategy,
        **save,
        **best,
    )
    return TrainingArguments(**{**kwargs, **overrides})
