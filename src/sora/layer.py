"""The SoRA layer: a gate between LoRA's down- and up-projection, and the soft threshold that sparsifies it.

A SoRA module computes ``h = W0·x + s · B · diag(g) · A · x`` (the paper's eq. 3), with ``A = W_d`` (r_max × d_in),
``B = W_u`` (d_out × r_max), ``s = lora_alpha / r_max`` and the gate ``g ∈ R^{r_max}``. PEFT's LoRA layer computes
``W0·x + s · lora_B(lora_A(dropout(x)))``, so the equation holds once ``lora_A`` multiplies its output by ``g``:
:func:`add_gate` makes ``lora_A`` a :class:`GatedLinear`, which holds the gate as the parameter ``sora_gate``.
A and B stay PEFT's ``lora_A[adapter].weight`` and ``lora_B[adapter].weight``, under their usual state-dict names.

The proximal gate step (eq. 6, :mod:`sora.optim`) applies :func:`soft_threshold` to ``g``: entries it sets to zero
are dead ranks, which :func:`sora.prune` deletes.

A whole model trains faster with its gates in one tensor, folded into B before each forward pass (:mod:`sora.bank`);
then ``lora_A`` skips its multiply (``sora_folded``) and ``lora_B`` multiplies by ``B' = B · diag(g)``
(``sora_weight``). Either way the layer computes eq. 3.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
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
    sora_bank: nn.Module | None = None  # the GateBank that holds g, when the model has one (sora.bank)
    sora_index: int = 0  # this module's row of the bank
    sora_folded: bool = False  # g is inside lora_B's B' for this forward pass (sora.bank)

    @property
    def gate(self) -> torch.Tensor:
        """g: ``sora_gate``, or its row of the bank's tensor (which then receives the gradient)."""
        return self.sora_gate if self.sora_bank is None else self.sora_bank.gate_of(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        down = F.linear(x, self.weight, self.bias)
        return down if self.sora_folded else down * self.gate


class FoldedLinear(nn.Linear):
    """LoRA's up-projection: ``B·x``, or ``B'·x`` with ``B' = B·diag(g)`` (``sora_weight``) while the gate is folded."""

    sora_weight: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight if self.sora_weight is None else self.sora_weight, self.bias)


def add_gate(
    lora_a: nn.Linear, lora_b: nn.Linear, gate_init: float | str, generator: torch.Generator | None = None
) -> GatedLinear:
    """Put a gate between a LoRA module's ``lora_a`` and ``lora_b``, in place: ``lora_a`` becomes a
    :class:`GatedLinear` holding ``sora_gate``, ``lora_b`` a :class:`FoldedLinear`; their weights and state-dict keys
    stay. ``gate_init`` is a number (every entry) or ``"randn"`` (N(0, 1) entries, as the authors' code; drawn from
    ``generator``, a CPU generator, if given, else from torch's global RNG)."""
    shape, device = (lora_a.out_features,), lora_a.weight.device
    if gate_init == "randn" and generator is not None:
        gate = torch.randn(shape, generator=generator).to(device)
    elif gate_init == "randn":
        gate = torch.randn(shape, device=device)
    else:
        gate = torch.full(shape, float(gate_init), device=device)
    lora_a.__class__ = GatedLinear
    lora_a.register_parameter(GATE_NAME, nn.Parameter(gate))
    lora_b.__class__ = FoldedLinear
    return lora_a
