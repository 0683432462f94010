"""SoraOptimizer: AdamW for A, B and the rest; a proximal gradient step for the gates (the paper's eq. 6).

The gates minimise ``L(g) + xi·||g||_1``. Their step is a gradient step followed by the soft threshold::

    g <- T_tau(g - update),   T_tau(x) = sign(x) · max(|x| - tau, 0)

``gate_update="sgd"`` uses ``update = lr_t · grad``; ``"adamw"`` uses Adam's update (as the authors' code does).
``threshold="paper"`` takes ``tau = xi · lr_t`` (lr_t: the gate group's current learning rate, so LR schedules
apply), ``"constant"`` takes ``tau = xi`` (the authors' code). ``gate_update="sgd", threshold="paper"`` is exactly
``g <- T_{lr_t·xi}(g - lr_t·grad_g)``.

The defaults (``adamw``, ``paper``, ``xi=0.5``) are those of ``sora train``, picked from the GLUE runs in
BENCHMARKS.md: an Adam step moves a gate by at most about lr_t, so ``tau = 0.5·lr_t`` prunes the gates whose gradient
is too weak or too inconsistent to outpull half of it, in runs of any length, while a constant ``tau`` above lr_t
prunes every gate after ``|g|/tau`` steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .bank import gate_parameters
from .errors import SoraError
from .modules import gate_vector

GATE_UPDATES = ("adamw", "sgd")
THRESHOLDS = ("paper", "constant")


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise SoraError(f"{name} must be a positive number, got {value!r}")


def _check_xi(xi: float) -> None:
    if not (isinstance(xi, int | float) and math.isfinite(xi) and xi >= 0):
        raise SoraError(f"xi must be a finite number >= 0, got {xi!r}")


class SoraOptimizer(torch.optim.AdamW):
    """One ``torch.optim.Optimizer`` for a SoRA model: any torch LR scheduler and ``transformers.Trainer`` work.

    Param groups: the trainable non-gate parameters (AdamW, ``weight_decay``), then the gates (no weight decay,
    learning rate ``gate_lr`` or ``lr``, and the keys ``xi``, ``gate_update``, ``threshold`` that ``state_dict()``
    saves). Every group runs torch's multi-tensor (``foreach``) Adam, and the soft threshold runs over all gates at
    once: the optimizer's number of operator calls per step does not grow with the number of modules.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float,
        weight_decay: float = 0.0,
        xi: float = 0.5,
        gate_lr: float | None = None,
        gate_update: str = "adamw",
        threshold: str = "paper",
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        _check_positive("lr", lr)
        if gate_lr is not None:
            _check_positive("gate_lr", gate_lr)
        _check_xi(xi)
        if not weight_decay >= 0:
            raise SoraError(f"weight_decay must be >= 0, got {weight_decay!r}")
        if gate_update not in GATE_UPDATES:
            raise SoraError(f"gate_update must be one of {', '.join(GATE_UPDATES)}, got {gate_update!r}")
        if threshold not in THRESHOLDS:
            raise SoraError(f"threshold must be one of {', '.join(THRESHOLDS)}, got {threshold!r}")
        gate_params = gate_parameters(model)
        if not gate_params:
            raise SoraError("the model has no SoRA gates: build it with sora.get_sora_model")
        gate_ids = {id(p) for p in gate_params}
        others = [p for p in model.parameters() if p.requires_grad and id(p) not in gate_ids]
        groups = [{"params": others, "sora_gate": False}] if others else []
        groups.append(
            {
                "params": gate_params,
                "lr": gate_lr if gate_lr is not None else lr,
                "weight_decay": 0.0,
                "sora_gate": True,
                "xi": float(xi),
                "gate_update": gate_update,
                "threshold": threshold,
                # where the gates started: what sora.allocation compares the survivors with (saved, so resume keeps it)
                "initial_gates": gate_vector(gate_params, gathered=False).tolist(),
            }
        )
        # foreach: each Adam operation runs over all tensors of a group in one multi-tensor call, not once per
        # tensor (torch's default on CPU is the per-tensor loop, ~7 operator calls per parameter and step).
        super().__init__(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=True)

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a saved state; Adam stays multi-tensor also for states saved before every group had ``foreach``, and
        a gate group saved with another split of the gates (one tensor per module, from before the gates shared one
        tensor) is joined or split to this one's."""
        super().load_state_dict(self._regroup_gates(state_dict))
        for group in self.param_groups:
            group["foreach"] = True

    def _regroup_gates(self, state_dict: dict) -> dict:
        """``state_dict`` with the gate group's tensors (and their Adam state) split as in this optimizer."""
        saved = state_dict["param_groups"][-1]["params"]
        params = self.gate_group["params"]
        sizes = [p.numel() for p in params]
        if len(saved) == len(sizes) or not state_dict["param_groups"][-1].get("sora_gate"):
            return state_dict
        states = [state_dict["state"].get(i) for i in saved]
        state = {i: s for i, s in state_dict["state"].items() if i not in saved}
        new_ids = [saved[0] + k for k in range(len(sizes))]
        if all(s is not None for s in states):
            for i in new_ids:
                state[i] = {"step": states[0]["step"].clone()}
            for key in ("exp_avg", "exp_avg_sq"):
                joined = torch.cat([s[key].reshape(-1) for s in states])
                if joined.numel() != sum(sizes):
                    raise SoraError(f"the saved gate state holds {joined.numel()} gate entries, the model {sum(sizes)}")
                for i, param, part in zip(new_ids, params, joined.split(sizes), strict=True):
                    state[i][key] = part.reshape(param.shape).clone()
        groups = [*state_dict["param_groups"][:-1], {**state_dict["param_groups"][-1], "params": new_ids}]
        return {"state": state, "param_groups": groups}

    @property
    def gate_group(self) -> dict:
        return self.param_groups[-1]

    @property
    def xi(self) -> float:
        return self.gate_group["xi"]

    def set_xi(self, xi: float) -> None:
        """Change the sparsity strength ``xi`` between steps (the sparsifying scheduler does this)."""
        _check_xi(xi)
        self.gate_group["xi"] = float(xi)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group = self.gate_group
        params = [p for p in group["params"] if p.grad is not None]
        if group["gate_update"] == "adamw":
            super().step()
        else:
            all_groups, self.param_groups = self.param_groups, self.param_groups[:-1]
            try:
                super().step()
            finally:
                self.param_groups = all_groups
            if params:
                torch._foreach_add_(params, [p.grad for p in params], alpha=-group["lr"])
        if params:
            self._threshold(params, group)
        return loss

    @staticmethod
    def _threshold(params: list[torch.Tensor], group: dict) -> None:
        """``g <- T_tau(g)`` for all gates at once, in place, as ``g - clamp(g, -tau, tau)``.

        This equals :func:`soft_threshold` bit for bit (for ``|g| > tau`` both round ``|g| - tau`` once, the sign
        is exact; otherwise both give zero) in three multi-tensor calls whatever the number of gates.
        """
        tau = group["xi"] * (group["lr"] if group["threshold"] == "paper" else 1.0)
        inside = torch._foreach_clamp_max(torch._foreach_clamp_min(params, -tau), tau)
        torch._foreach_sub_(params, inside)


def as_sora_optimizer(optimizer: Any) -> SoraOptimizer | None:
    """``optimizer``, unwrapped from accelerate's wrapper (which the Trainer hands around), if it is a
    :class:`SoraOptimizer`; else None."""
    optimizer = getattr(optimizer, "optimizer", optimizer)
    return optimizer if isinstance(optimizer, SoraOptimizer) else None
