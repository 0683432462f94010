"""SoRA inside any ``transformers.Trainer``, subclasses included (TRL's ``SFTTrainer``, ...): one callback,
:class:`SoraCallback`, and :func:`create_sora_optimizer`, the optimizer from the Trainer's arguments.

``sora train`` and ``sora schedule`` run through the same callback. Use::

    model = sora.get_sora_model(base, sora.SoraConfig(r_max=8, task_type="CAUSAL_LM"))
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=records,
        optimizers=(sora.create_sora_optimizer(model, args), None),
        callbacks=[sora.SoraCallback(budget=sora.SparsityBudget(target_ratio=0.5), save_pruned_to="adapter")],
    )
    trainer.train()

A Trainer that builds its optimizer itself (under FSDP it refuses a ready one) takes the same function as its
optimizer factory: ``optimizer_cls_and_kwargs=(lambda: sora.create_sora_optimizer, {"args": args})``.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import CallbackHandler

from .bank import gate_parameters
from .budget import SparsityBudget, budget_log, budget_step
from .errors import SoraError
from .model import count_parameters
from .modules import gate_vector, gated_modules
from .optim import SoraOptimizer, as_sora_optimizer
from .prune import save_pruned
from .run_folder import last_checkpoint_text
from .sharding import any_everywhere


def create_sora_optimizer(model: torch.nn.Module, args: TrainingArguments, **options: Any) -> SoraOptimizer:
    """A :class:`~sora.SoraOptimizer` for ``model`` with the Trainer's AdamW settings from ``args`` (``learning_rate``,
    ``weight_decay``, ``adam_beta1`` / ``adam_beta2``, ``adam_epsilon``); ``options`` are SoraOptimizer's own
    (``xi``, ``gate_lr``, ``gate_update``, ``threshold``). Pass ``optimizers=(create_sora_optimizer(model, args),
    None)`` to the Trainer, or ``optimizer_cls_and_kwargs=(lambda: create_sora_optimizer, {"args": args})`` to let
    the Trainer build it on the model it trains."""
    return SoraOptimizer(
        model,
        lr=args.learning_rate,
        weight_decay=args.weight_decay,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        **options,
    )


class SoraCallback(TrainerCallback):
    """What SoRA needs in a ``transformers.Trainer``:

    * before training, the checks of a script that would train something else than SoRA (each one clear error): the
      model is the SoRA model itself (not wrapped again, as by a ``peft_config`` given with it), the optimizer is a
      :class:`~sora.SoraOptimizer` that holds its gates; ``budget`` (a :class:`~sora.SparsityBudget`) is attached
      for the Trainer's ``max_steps``, and a budget attached by hand for another number of steps is warned about
      and follows ``max_steps``;
    * after every optimizer step, a stop on a NaN/Inf gate; at every step end, the budget's step
      (:func:`sora.budget_step`: after the LR scheduler's step, before that step's checkpoint is saved, so a
      checkpoint holds the state its step left);
    * in every training log row: ``xi``, ``live_ranks``, ``nonzero_params`` and with a budget ``planned_params`` and
      ``budget_tau``, in the Trainer's ``log_history`` and in what ``report_to`` sends (the callback runs first, so
      the reporting integrations log the completed row);
    * with ``save_pruned_to``, the pruned adapter saved there when training ends (:func:`sora.prune.save_pruned`:
      a standard LoRA adapter for ``PeftModel.from_pretrained``; the Trainer's model stays as it is).
    """

    def __init__(self, budget: SparsityBudget | None = None, save_pruned_to: str | Path | None = None) -> None:
        self.budget = budget
        self.save_pruned_to = save_pruned_to

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: torch.nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        **kwargs: Any,
    ) -> None:
        sora_optimizer = _checked_optimizer(model, optimizer)
        group = sora_optimizer.gate_group
        if self.budget is not None and "budget_target" not in group:  # a resumed run's optimizer holds it already
            self.budget.attach(model, sora_optimizer, state.max_steps)
        if "budget_target" in group and group["budget_total_steps"] != state.max_steps:
            warnings.warn(
                f"the sparsity budget was attached for {group['budget_total_steps']} steps, but the Trainer runs "
                f"{state.max_steps} (max_steps): the budget follows the Trainer and lands at step {state.max_steps}",
                stacklevel=2,
            )
            group["budget_total_steps"] = state.max_steps
        _run_first(self)

    def on_optimizer_step(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: torch.nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        gates = gate_parameters(model)
        finite = bool(torch.isfinite(gate_vector(gates, gathered=False)).all())
        if any_everywhere(not finite, gates):
            raise SoraError(
                f"a SoRA gate became NaN/Inf at step {state.global_step + 1}: training stopped; "
                f"{last_checkpoint_text(args.output_dir)}"
            )

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: torch.nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        **kwargs: Any,
    ) -> None:
        budget_step(optimizer, model)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        model: torch.nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        **kwargs: Any,
    ) -> None:
        if logs is None or "loss" not in logs:  # evaluation rows and the run's summary row
            return
        sora_optimizer = as_sora_optimizer(optimizer)
        counts = count_parameters(model)  # every count from one read of the gates
        numbers = {
            "xi": sora_optimizer.xi,
            "live_ranks": counts["live_ranks"],
            "nonzero_params": counts["nonzero"],
            **budget_log(sora_optimizer),
        }
        logs.update(numbers)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(numbers)  # the Trainer stored a copy of the row before calling on_log

    def on_train_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: torch.nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        if self.save_pruned_to is not None and state.is_world_process_zero:
            save_pruned(model, self.save_pruned_to)


BudgetCallback = SoraCallback  # its name before it did more than the budget's step (sora.BudgetCallback)


def _checked_optimizer(model: torch.nn.Module, optimizer: Any) -> SoraOptimizer:
    """``optimizer`` as the SoraOptimizer of ``model``'s gates; a SoraError for a script that would train otherwise."""
    if not hasattr(model, "sora_config"):
        if gated_modules(model):
            raise SoraError(
                "the Trainer trains a model wrapped around the SoRA model (a peft_config given with it?), whose "
                "gates the SoRA optimizer does not train: pass the model from sora.get_sora_model and no peft_config"
            )
        raise SoraError("the Trainer's model has no SoRA gates: build it with sora.get_sora_model")
    sora_optimizer = as_sora_optimizer(optimizer)
    if sora_optimizer is None:
        name = type(getattr(optimizer, "optimizer", optimizer)).__name__  # unwrapped from accelerate's wrapper
        raise SoraError(
            f"the Trainer's optimizer ({name}) is not a sora.SoraOptimizer: it would train SoRA's gates without the "
            f"proximal step that zeroes them; pass optimizers=(sora.create_sora_optimizer(model, args), None)"
        )
    if not {id(p) for p in gate_parameters(model)} & {id(p) for p in sora_optimizer.gate_group["params"]}:
        raise SoraError(
            "the SoRA optimizer holds none of the gates of the model the Trainer trains: build it on that model "
            "(sora.create_sora_optimizer(model, args))"
        )
    return sora_optimizer


def _run_first(callback: TrainerCallback) -> None:
    """Move ``callback`` to the front of the callbacks of the Trainer that is calling it.

    The Trainer puts the reporting integrations (``report_to``) before the callbacks it is given, and each reports
    a log row when its ``on_log`` is called: to report SoRA's numbers they must come after this callback. A callback
    gets no reference to its ``CallbackHandler``, so it is found as the caller's ``self``; the handler's list is
    replaced, not changed, as it may be iterating over it now.
    """
    frame = sys._getframe(1)
    while frame is not None:
        handler = frame.f_locals.get("self")
        if isinstance(handler, CallbackHandler) and callback in handler.callbacks:
            handler.callbacks = [callback, *(c for c in handler.callbacks if c is not callback)]
            return
        frame = frame.f_back
