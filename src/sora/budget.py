"""Sparsity budget: the user names the adapter's size, SoRA's gates choose which ranks fill it.

SoRA (Ding et al., EMNLP 2023) sparsifies with the proximal gate step ``g <- T_tau(g - update)``, ``tau = xi·lr_t``,
whose strength ``xi`` sets the final size only indirectly (it depends on the run length, the LR schedule and the
task). A :class:`SparsityBudget` takes the size instead, as a fraction of the r_max adapter (``target_ratio``) or
as a number of non-zero adapter parameters (``target_params``: what the pruned LoRA holds,
``count_parameters(model)["nonzero"]``), and steers the gates to it within one run:

* **Plan.** The live-parameter count follows a cubic ramp (AdaLoRA's budget schedule): the count at attach time
  (the whole r_max adapter in a fresh run) until ``warmup`` of the steps, then
  ``target + (start - target)·(1 - p)^3`` with ``p`` going from 0 to 1 until ``end`` of the steps, then the target.
  The warmup lets the gradients move the gates before any rank dies, so the N(0, 1) start is not all that decides.
* **Top-up threshold.** After every optimizer step, when the gates left more than the plan, one more soft threshold
  ``T_tau`` is applied with the smallest ``tau`` that leaves at most the planned count. ``T_a ∘ T_b = T_{a+b}``, so
  the step is one proximal step ``T_{xi·lr_t + tau}``: the smallest strength that keeps the plan. Soft thresholding
  shrinks every gate by the same amount, so the ranks that die are those of smallest ``|g_i|`` after the gradient
  step, the ones their gradients did not hold, in any module, never in module order. The largest rank always stays.
* **xi, by integral control.** The optimizer's own xi (``tau = xi·lr_t``, or ``xi`` under the constant threshold
  with the same ``tau``) is 0 during the warmup, then starts at 0.5 (``sora train``'s default) and is multiplied
  after every step by ``exp(relative error)`` of the count the proximal step left against 1.1 × the plan, within
  [1e-4, 1]: kept a little above plan, the count is cut to the plan by the top-up instead of falling below it
  (zero gates revive only when ``xi`` is small; at ``xi >= 1`` no gate holds against the threshold).
* **Landing.** The last step is taken at ``xi = 0``: zero gates that their gradient pulls out come back, and the
  top-up then keeps the largest set of ranks, by ``|g_i|``, whose parameters fit the target: the run ends within
  one rank's ``d_in + d_out`` below it. Ranks that revive only on that step have gates of about one Adam step.

**Which ranks survive.** In short runs the gates move little from their N(0, 1) start (about lr per step), so that
start, not the data, would decide which ranks survive (docs/budgets.md). The default allocation is therefore
``sora train --target-ratio``'s, learned from the data: ``score="contribution"`` ranks the top-up by each rank's
contribution ``|g_i|·‖B[:, i]‖·‖A[i, :]‖`` instead of ``|g_i|`` (``g_i B[:, i] A[i, :]`` is unchanged when ``g_i``
shrinks and B's column grows, so ``|g_i|`` alone measures a rank's weight only partly) and zeroes the gates of the
ranks that do not fit, leaving the others as they are; and on a model built with ``SoraConfig``'s default
``gate_init`` (None), :meth:`SparsityBudget.attach` before the first step starts every gate at
:data:`BUDGET_GATE_INIT` (1.0), as ``sora train --target-ratio`` does. A contribution step reads A and B, so
:func:`budget_step` then needs the model. ``score="gate"`` is the paper's choice: gates left as built (N(0, 1) by
default), top-up by ``|g_i|``. A ``gate_init`` named in the ``SoraConfig`` is always kept.

The controller's state (target, plan, step count, the last tau, the parameters of each gate entry's rank) lives in
the optimizer's gate param group: a step needs nothing else (no walk of the model), ``optimizer.state_dict()`` (the
Trainer's checkpoints, :func:`sora.save_sora`) saves it and ``load_state_dict`` restores it: a resumed run is
bit-exact. Every decision is a deterministic function of the gates and that state, so under DDP, whose processes
hold identical gates, every process takes the same one.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from .bank import gate_parameters
from .errors import SoraError
from .layer import soft_threshold
from .model import live_params, rank_sizes
from .modules import gate_vector, gated_modules
from .optim import SoraOptimizer, as_sora_optimizer

BUDGET_GATE_INIT = 1.0  # where a contribution budget starts gates left at SoraConfig's default (sora train's too)
HOLD_XI = 0.5  # the controller's first xi: sora train's default (BENCHMARKS.md)
XI_RANGE = (1e-4, 1.0)  # xi >= 1: no gate holds against the threshold; near 0 every zero gate revives
MARGIN = 0.1  # the controller aims the count the proximal step leaves at 1.1 x the plan; the top-up cuts the rest
GAIN = 1.0  # xi is multiplied by exp(GAIN * relative error of that count) after every step
SCORES = ("gate", "contribution")  # what the top-up ranks by: |g_i|, or |g_i|·‖B[:, i]‖·‖A[i, :]‖


class SparsityBudget:
    """A target size for a SoRA adapter: ``target_ratio`` of the r_max adapter or ``target_params`` non-zero
    parameters (exactly one), reached by ``end`` of the steps along a cubic ramp that starts at ``warmup``.

    Use::

        budget = sora.SparsityBudget(target_ratio=0.5)
        budget.attach(model, optimizer, total_steps)
        for step in range(total_steps):
            ...; optimizer.step(); scheduler.step()
            sora.budget_step(optimizer, model)       # after the LR scheduler's step, before zero_grad
            optimizer.zero_grad()

    In a ``transformers.Trainer``, ``sora.SoraCallback(budget=budget)`` attaches it for the Trainer's ``max_steps``
    and steps it (``sora train --target-ratio / --target-params`` runs through the same callback). ``score``: what
    the top-up ranks by, ``"contribution"`` (the default, ``sora train``'s) or ``"gate"`` (the paper's); see the
    module docstring for which ranks survive.
    """

    def __init__(
        self,
        target_ratio: float | None = None,
        target_params: int | None = None,
        warmup: float = 0.1,
        end: float = 0.75,
        score: str = "contribution",
    ) -> None:
        if (target_ratio is None) == (target_params is None):
            raise SoraError("a sparsity budget takes exactly one of target_ratio and target_params")
        if target_ratio is not None and not (_is_number(target_ratio) and 0 < target_ratio <= 1):
            raise SoraError(f"target_ratio must be in (0, 1], got {target_ratio!r}")
        whole = target_params is not None and _is_number(target_params) and target_params == int(target_params)
        if target_params is not None and not (whole and target_params >= 1):
            raise SoraError(f"target_params must be a whole number >= 1, got {target_params!r}")
        if not (_is_number(warmup) and _is_number(end) and 0 <= warmup < end <= 1):
            raise SoraError(f"a budget's ramp needs 0 <= warmup < end <= 1, got warmup={warmup!r}, end={end!r}")
        if score not in SCORES:
            raise SoraError(f"a budget's score must be one of {', '.join(SCORES)}, got {score!r}")
        self.target_ratio, self.target_params = target_ratio, target_params
        self.score = score
        self.warmup, self.end = float(warmup), float(end)

    def resolve(self, model: nn.Module) -> int:
        """The target as a number of non-zero parameters of ``model``'s adapter; an impossible one is a SoraError."""
        return self._resolve(_gates_and_sizes(model)[1])

    def _resolve(self, sizes: torch.Tensor) -> int:
        """:meth:`resolve` for an adapter whose ranks hold ``sizes`` parameters each."""
        full = int(sizes.sum())
        if self.target_params is not None:
            target = int(self.target_params)
            if target > full:
                raise SoraError(f"target_params {target:,} is more than the r_max adapter holds ({full:,})")
        else:
            target = math.floor(self.target_ratio * full)
        smallest = int(sizes.min())
        if target < smallest:
            raise SoraError(f"a budget of {target:,} parameters is smaller than one rank ({smallest:,}): nothing fits")
        return target

    def attach(self, model: nn.Module, optimizer: SoraOptimizer, total_steps: int) -> int:
        """Write the controller's state into ``optimizer``'s gate param group for a run of ``total_steps`` optimizer
        steps starting now, and set ``xi`` for the first step; returns the target in parameters.

        A contribution budget attached before the first step to a model whose ``SoraConfig`` left ``gate_init`` at
        its default starts every gate at :data:`BUDGET_GATE_INIT` (and records that in the config and in the
        optimizer's ``initial_gates``), so the data choose the survivors as in ``sora train --target-ratio``."""
        if not isinstance(optimizer, SoraOptimizer):
            raise SoraError("a sparsity budget steers a sora.SoraOptimizer")
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise SoraError(f"total_steps must be an integer >= 1, got {total_steps!r}")
        gate_list, sizes = _gates_and_sizes(model)
        target = self._resolve(sizes)
        group = optimizer.gate_group
        if self.score == "contribution" and _gates_at_default_start(model, optimizer):
            with torch.no_grad():
                for gate in gate_list:
                    gate.fill_(BUDGET_GATE_INIT)
            model.sora_config = dataclasses.replace(model.sora_config, gate_init=BUDGET_GATE_INIT)
            group["initial_gates"] = gate_vector(gate_list, gathered=False).tolist()
        group.update(
            budget_target=target,
            budget_start=live_params(gate_vector(gate_list, gathered=False), sizes),
            budget_total_steps=total_steps,
            budget_step=0,
            budget_warmup=self.warmup,
            budget_end=self.end,
            budget_tau=0.0,
            budget_xi=HOLD_XI,
            budget_sizes=sizes.tolist(),
            budget_score=self.score,
        )
        optimizer.set_xi(0.0)
        return target


def _gates_at_default_start(model: nn.Module, optimizer: SoraOptimizer) -> bool:
    """Whether ``model``'s gates are still where ``SoraConfig``'s default ``gate_init`` put them: no optimizer step
    yet (Adam's state is made at the first), and no ``gate_init`` named."""
    config = getattr(model, "sora_config", None)
    stepped = any(optimizer.state.get(p) for p in optimizer.gate_group["params"])
    return config is not None and config.gate_init is None and not stepped


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _gates_and_sizes(model: nn.Module) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The tensors that hold ``model``'s gates (:func:`sora.bank.gate_parameters`: one for all modules) and, per gate
    entry, the parameters its rank holds (:func:`sora.model.rank_sizes`): both in the order of
    :func:`sora.modules.gated_modules`, the bank's rows too."""
    sizes = rank_sizes(model)
    if not len(sizes):
        raise SoraError("the model has no SoRA gates: build it with sora.get_sora_model")
    return gate_parameters(model), sizes


def planned_params(group: dict[str, Any], step: int) -> int:
    """The live parameters the plan allows after optimizer step ``step`` (1-based) of the budget in ``group``."""
    total, start, target = group["budget_total_steps"], group["budget_start"], group["budget_target"]
    begin, finish = group["budget_warmup"] * total, group["budget_end"] * total
    if step >= total or step >= finish:
        return target
    progress = min(max((step - begin) / (finish - begin), 0.0), 1.0)
    return target + math.ceil((start - target) * (1.0 - progress) ** 3)


def keep_threshold(values: torch.Tensor, sizes: torch.Tensor, budget: int) -> float:
    """The smallest ``tau`` such that ``T_tau(values)`` leaves at most ``budget`` live parameters (entry ``i``
    costs ``sizes[i]``), keeping at least the largest entry: the ranks of largest ``|g|`` whose sizes fit."""
    magnitudes, order = values.abs().sort(descending=True, stable=True)
    fits = int((torch.cumsum(sizes[order], 0) <= budget).sum())
    keep = max(1, fits)
    if keep >= len(magnitudes) or magnitudes[keep] == 0:
        return 0.0
    tau = magnitudes[keep]
    if tau >= magnitudes[0]:  # a tie with the largest gate: keep that one alive
        tau = torch.nextafter(magnitudes[0], torch.zeros_like(tau))
    return float(tau)


def _contributions(model: nn.Module, flat: torch.Tensor) -> torch.Tensor:
    """``|g_i|·‖B[:, i]‖·‖A[i, :]‖`` of every gate entry (``flat``: the gates, in module order)."""
    norms = [(m.lora_a.weight.norm(dim=1) * m.lora_b.weight.norm(dim=0)).float().cpu() for m in gated_modules(model)]
    return flat.abs() * torch.cat(norms)


@torch.no_grad()
def budget_step(optimizer: torch.optim.Optimizer, model: nn.Module | None = None) -> None:
    """Advance the budget in ``optimizer`` by one optimizer step: threshold the gates down to the plan and set ``xi``
    for the next step (see the module docstring). Call it after ``optimizer.step()`` and the LR scheduler's step;
    a ``score="contribution"`` budget needs ``model``. ``optimizer``: a :class:`SoraOptimizer` or accelerate's
    wrapper of one. Does nothing when no budget is attached."""
    sora_optimizer = as_sora_optimizer(optimizer)
    if sora_optimizer is None:
        raise SoraError(f"a sparsity budget steers a sora.SoraOptimizer, not a {type(optimizer).__name__}")
    group = sora_optimizer.gate_group
    if "budget_target" not in group:
        return
    by_contribution = group.get("budget_score", "gate") == "contribution"
    if by_contribution and model is None:
        raise SoraError("a budget with score='contribution' reads A and B: call budget_step(optimizer, model)")
    group["budget_step"] += 1
    step, total = group["budget_step"], group["budget_total_steps"]
    gate_list, sizes = group["params"], torch.tensor(group["budget_sizes"])
    flat = gate_vector(gate_list, gathered=False)
    plan, natural = planned_params(group, step), live_params(flat, sizes)
    scores = _contributions(model, flat) if by_contribution else flat
    tau = keep_threshold(scores, sizes, plan) if natural > plan else 0.0
    if tau > 0 and by_contribution:  # the ranks that do not fit die; the others keep their gates
        dead = iter(torch.split(scores.abs() <= tau, [g.numel() for g in gate_list]))
        for gate in gate_list:
            gate.masked_fill_(next(dead).reshape(gate.shape).to(gate.device), 0.0)
    elif tau > 0:
        for gate in gate_list:
            gate.copy_(soft_threshold(gate, tau))
    group["budget_tau"] = tau
    xi = 0.0  # the warmup and the last step
    if group["budget_warmup"] * total <= step + 1 < total:  # integral control: count above its aim, more pressure
        error = (natural - (1 + MARGIN) * plan) / plan
        group["budget_xi"] = min(max(group["budget_xi"] * math.exp(GAIN * error), XI_RANGE[0]), XI_RANGE[1])
        xi = group["budget_xi"]
    sora_optimizer.set_xi(xi if group["threshold"] == "paper" else xi * group["lr"])


def budget_log(optimizer: SoraOptimizer) -> dict[str, float]:
    """What a log row shows of the budget: the planned live parameters and the top-up ``tau`` of the last step."""
    group = optimizer.gate_group
    if "budget_target" not in group:
        return {}
    return {"planned_params": planned_params(group, group["budget_step"]), "budget_tau": group["budget_tau"]}


def budget_target(optimizer: Any) -> int | None:
    """The target in parameters of the budget attached to ``optimizer``, or None."""
    optimizer = as_sora_optimizer(optimizer)
    return None if optimizer is None else optimizer.gate_group.get("budget_target")
