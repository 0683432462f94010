"""The SoRA layer: a gate between LoRA's down- and up-projection, and the soft threshold that sparsifies it.

A SoRA module computes ``h = W0·x + s · B · diag(g) · A · x`` (the paper's eq. 3), with ``A = W_d`` (r_max × d_in),
``B = W_u`` (d_out × r_max), ``s = lora_alpha / r_max`` and the gate ``g ∈ R^{r_max}``. We keep PEFT's LoRA layers
and their parameters as they are: ``lora_A[adapter].weight`` is A, ``lora_B[adapter].weight`` is B, and the gate is a
parameter named ``sora_gate`` of ``lora_A[adapter]``. PEFT's ``lora_B(lora_A(dropout(x))) * scaling`` is the
equation once the gate sits between the two projections, which it does in one of two ways:

* **Folded** (:class:`GateFold`, the training path of a whole model): before the model's forward pass, one
  multiplication over all modules at once forms ``B' = B · diag(g)`` for every module (``B`` of all modules stacked
  into one tensor, each row times its module's gate), and ``lora_B`` multiplies by its slice of ``B'``. Autograd takes
  the gradient back through that one multiplication: ``dL/dB = dL/dB' · diag(g)`` and
  ``dL/dg_i = <B[:, i], dL/dB'[:, i]>``, for all modules in a few calls. A, B and g stay ordinary leaf parameters
  that receive their gradients from autograd, so gradient clipping, gradient accumulation, DDP's all-reduce,
  checkpoints and the optimizer see exactly what they saw with the gate in each module. What goes away is the work
  per module and step: a gate multiply in the forward pass and, in the backward pass, two multiplies and the
  reduction of the gate's gradient over the batch (plus the dtype casts around them under autocast), which bound the
  step time on a GPU, where a step at batch 32 is limited by kernel launches. ``B'`` is never stored in place of
  B: B keeps the columns where ``g_i = 0``.
* **Per module** (:class:`GatedLinear` alone): ``lora_A``'s output is multiplied by ``g``. This runs whenever the
  fold does not: a LoRA layer called on its own, a model whose adapters are not all on one device and dtype or whose
  weights are sharded (DeepSpeed ZeRO-3, FSDP), and training with activation checkpointing (the recomputed forward
  pass must record the same operations as the first one).

Both ways compute the same function and the same gradients, up to float rounding (the products are formed in another
order).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

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
    """LoRA's down-projection ``A`` followed by ``diag(g)``: ``forward(x) = (A·x) ⊙ g``, or ``A·x`` while the gate is
    folded into its ``lora_B`` (``sora_folded``, set by :class:`GateFold` for one forward pass)."""

    sora_gate: nn.Parameter
    sora_folded: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        return out if self.sora_folded else out * self.sora_gate


class FoldedLinear(nn.Linear):
    """LoRA's up-projection: ``B·x``, or ``B'·x`` with ``B' = B·diag(g)`` in ``sora_weight`` while :class:`GateFold`
    has folded the gate in (for one forward pass)."""

    sora_weight: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight if self.sora_weight is None else self.sora_weight, self.bias)


def add_gate(layer: LoraLayer, adapter: str, gate_init: float | str) -> GatedLinear:
    """Give the LoRA layer's ``adapter`` a gate, in place: ``lora_A`` becomes a :class:`GatedLinear` holding
    ``sora_gate``, ``lora_B`` a :class:`FoldedLinear`; their weights and state-dict keys stay."""
    lora_a, lora_b = layer.lora_A[adapter], layer.lora_B[adapter]
    shape, device = (lora_a.out_features,), lora_a.weight.device
    if gate_init == "randn":  # the authors' code: g ~ N(0, 1)
        gate = torch.randn(shape, device=device)
    else:
        gate = torch.full(shape, float(gate_init), device=device)
    lora_a.__class__ = GatedLinear
    lora_a.register_parameter(GATE_NAME, nn.Parameter(gate))
    lora_b.__class__ = FoldedLinear
    return lora_a


class GateFold:
    """The forward hooks of a SoRA model that fold every gate into its ``lora_B`` for one forward pass.

    Before the forward pass: ``B' = cat(B) * g[module of each row]``, split into one slice per module (each slice a
    view, so autograd joins their gradients in one call), ``lora_B`` uses its slice and ``lora_A`` skips the gate.
    After it (also when it raises), every layer is back to the per-module gate, so a LoRA layer called on its own
    never sees a fold of stale parameters. A callable object rather than a closure, so ``copy.deepcopy`` of the model
    gives the copy hooks on its own layers.
    """

    def __init__(self, model: nn.Module, base: nn.Module) -> None:
        pairs = [(m.lora_A[a], m.lora_B[a]) for _, m, a in lora_layers(model) if isinstance(m.lora_A[a], GatedLinear)]
        self.lora_a = [a for a, _ in pairs]
        self.lora_b = [b for _, b in pairs]
        self.shapes = [(b.out_features, b.in_features) for b in self.lora_b]
        # transformers marks the modules that can checkpoint with a ``gradient_checkpointing`` attribute
        self.checkpointable = [m for m in base.modules() if hasattr(m, "gradient_checkpointing")]
        self.rows: torch.Tensor | None = None  # module index of every row of cat(B), on B's device

    def foldable(self, model: nn.Module, weights: list[torch.Tensor], gate_list: list[torch.Tensor]) -> bool:
        """Whether the fold applies now: not under activation checkpointing, every B and gate whole, on one device."""
        if model.training and torch.is_grad_enabled() and any(m.gradient_checkpointing for m in self.checkpointable):
            return False
        if not weights:
            return False
        device, dtype, gate_dtype = weights[0].device, weights[0].dtype, gate_list[0].dtype
        return all(
            w.shape == shape
            and g.shape == shape[1:]
            and w.device == g.device == device
            and w.dtype == dtype
            and g.dtype == gate_dtype
            for w, g, shape in zip(weights, gate_list, self.shapes, strict=True)
        )

    def __call__(self, model: nn.Module, args: Any) -> None:
        weights = [b.weight for b in self.lora_b]
        gate_list = [a.sora_gate for a in self.lora_a]
        if not self.foldable(model, weights, gate_list):
            return
        sizes = [shape[0] for shape in self.shapes]
        if self.rows is None or self.rows.device != weights[0].device or self.rows.numel() != sum(sizes):
            counts = torch.tensor(sizes, device=weights[0].device)
            self.rows = torch.repeat_interleave(torch.arange(len(sizes), device=weights[0].device), counts)
        gate_rows = torch.stack(gate_list).index_select(0, self.rows)
        if gate_rows.dtype != weights[0].dtype:
            gate_rows = gate_rows.to(weights[0].dtype)
        folded = torch.cat(weights) * gate_rows
        self._set(folded.split(sizes), True)

    def unfold(self, model: nn.Module, args: Any, output: Any) -> None:
        self._set([None] * len(self.lora_b), False)

    def _set(self, weights: list[torch.Tensor | None], folded: bool) -> None:
        # plain attributes, neither parameters nor buffers: object.__setattr__ skips nn.Module's checks (10x faster)
        for lora_a, lora_b, weight in zip(self.lora_a, self.lora_b, weights, strict=True):
            object.__setattr__(lora_a, "sora_folded", folded)
            object.__setattr__(lora_b, "sora_weight", weight)


def attach_gate_fold(model: nn.Module, base: nn.Module) -> None:
    """Fold the gates of ``model``'s LoRA layers into B around every forward pass of ``base`` (the module that runs
    them all: the transformers model inside a PeftModel)."""
    fold = GateFold(model, base)
    base.register_forward_pre_hook(fold)
    base.register_forward_hook(fold.unfold, always_call=True)


def detach_gate_fold(base: nn.Module) -> None:
    """Remove the hooks of :func:`attach_gate_fold` from ``base`` (before its LoRA layers are unloaded)."""
    for hooks in (base._forward_pre_hooks, base._forward_hooks):
        for key in [k for k, hook in hooks.items() if isinstance(getattr(hook, "__self__", hook), GateFold)]:
            del hooks[key]
            base._forward_hooks_always_called.pop(key, None)


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoraLayer, str]]:
    """Yield ``(module name, LoRA layer, adapter name)`` for every LoRA module of ``model``, gated or not."""
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and isinstance(module.lora_A, nn.ModuleDict):
            for adapter in module.lora_A:
                yield name, module, adapter


def gates(model: nn.Module) -> list[nn.Parameter]:
    """Every gate parameter of ``model``, in module order."""
    return [m.lora_A[a].sora_gate for _, m, a in lora_layers(model) if isinstance(m.lora_A[a], GatedLinear)]
