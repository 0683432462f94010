"""The SoRA layer: a gate between LoRA's down- and up-projection, and the soft threshold that sparsifies it.

A SoRA module computes ``h = W0·x + s · B · diag(g) · A · x`` (the paper's eq. 3), with ``A = W_d`` (r_max × d_in),
``B = W_u`` (d_out × r_max), ``s = lora_alpha / r_max`` and the gate ``g ∈ R^{r_max}``. We keep PEFT's LoRA layers
as they are and put ``g`` on the output of ``lora_A``: PEFT's ``lora_B(lora_A(dropout(x))) * scaling`` then is
exactly the equation. The gate is a parameter named ``sora_gate`` of ``lora_A[adapter]``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from peft.tuners.lora import LoraLayer
from torch import nn

GATE_NAME = "sora_gate"

# PEFT's save_pretrained takes any 1-D tensor under lora_A for an unsharded FSDP/ZeRO-3 shard; gates are 1-D by design.
warnings.filterwarnings("ignore", message=r"Adapter '.*': \d+ LoRA tensor\(s\) have invalid shape: \S*sora_gate")


def soft_threshold(x: torch.Tensor, tau: float | torch.Tensor) -> torch.Tensor:
    """The proximal operator of ``tau·||x||_1``: ``T_tau(x) = sign(x) · max(|x| - tau, 0)`` (eq. 6)."""
    return torch.sign(x) * torch.clamp(torch.abs(x) - tau, min=0)


class GatedLinear(nn.Linear):
    """LoRA's down-projection ``A`` followed by ``diag(g)``: ``forward(x) = (A·x) ⊙ g``."""

    sora_gate: nn.Parameter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) * self.sora_gate


def add_gate(lora_a: nn.Linear, gate_init: float | str) -> GatedLinear:
    """Turn PEFT's ``lora_A`` linear into a :class:`GatedLinear` in place, keeping its weight and state-dict keys."""
    shape, device = (lora_a.out_features,), lora_a.weight.device
    if gate_init == "randn":  # the authors' code: g ~ N(0, 1)
        gate = torch.randn(shape, device=device)
    else:
        gate = torch.full(shape, float(gate_init), device=device)
    lora_a.__class__ = GatedLinear
    lora_a.register_parameter(GATE_NAME, nn.Parameter(gate))
    return lora_a


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoraLayer, str]]:
    """Yield ``(module name, LoRA layer, adapter name)`` for every LoRA module of ``model``, gated or not."""
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and isinstance(module.lora_A, nn.ModuleDict):
            for adapter in module.lora_A:
                yield name, module, adapter


def gates(model: nn.Module) -> list[nn.Parameter]:
    """Every gate parameter of ``model``, in module order."""
    return [m.lora_A[a].sora_gate for _, m, a in lora_layers(model) if isinstance(m.lora_A[a], GatedLinear)]
