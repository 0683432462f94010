"""SoRA and its baselines on transformers' Trainer: the Trainer of a run (``SoraTrainer``: sharded checkpoints, the
stop on a non-finite loss), the callback of a method's step hook (``StepHooks``), and the Trainer's arguments of a
run. What differs per method comes from its :class:`sora.methods.Method`; what SoRA needs in any Trainer (its
budget, gate checks and log numbers) from :class:`sora.SoraCallback`."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from .errors import SoraError
from .methods import Method, get_method
from .model import load_safetensors
from .run_config import TrainConfig
from .run_folder import eval_batch_size, last_checkpoint_text
from .sharding import gathered_optimizer_state, gathered_state, shard_model, shard_optimizer_state


class SoraTrainer(Trainer):
    """The Trainer of a run: a stop on a non-finite loss, and checkpoints of sharded parameters.

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

    def training_step(self, model, inputs, *args: Any, **kwargs: Any) -> torch.Tensor:
        loss = super().training_step(model, inputs, *args, **kwargs)
        if not torch.isfinite(loss).all():
            raise SoraError(
                f"loss is {loss.item()} at step {self.state.global_step + 1}: training stopped; "
                f"{last_checkpoint_text(self.args.output_dir)}"
            )
        return loss


class StepHooks(TrainerCallback):
    """Times the training steps alone (no evaluation, no saving) and runs the method's hook after each optimizer
    step (AdaLoRA reallocates its ranks)."""

    def __init__(self, model: torch.nn.Module, method: Method) -> None:
        self.model, self.method = model, method
        self.step_seconds = 0.0
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_optimizer_step(self, args, state, control, **kwargs):
        try:
            self.method.on_optimizer_step(self.model, state.global_step + 1)
        except SoraError as e:
            raise SoraError(f"{e}; {last_checkpoint_text(args.output_dir)}") from None

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
    # Some methods keep their final model (AdaLoRA: Method.keeps_best). Keeping the best needs saves on eval steps.
    aligned = (cfg.save_steps or 0) % (cfg.eval_steps or 1) == 0 and bool(cfg.save_steps) == bool(cfg.eval_steps)
    # A sparsity budget is reached late in training: its final model is kept too, as it is the one at the budget.
    if evaluate and get_method(cfg.method).keeps_best and aligned and not cfg.budgeted:
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
