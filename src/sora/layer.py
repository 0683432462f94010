"""The SoRA layer: a gate between LoRA's down- and up-projection, and the soft threshold that sparsifies it.

A SoRA module computes ``h = W0·x + s · B · diag(g) · A · x`` (the paper's eq. 3), with ``A = W_d`` (r_max × d_in),
``B = W_u`` (d_out × r_max), ``s = lora_alpha / r_max`` and the gate ``g ∈ R^{r_max}``. We keep PEFT's LoRA layers
and their parameters as they are: ``lora_A[adapter].weight`` is A, ``lora_B[adapter].weight`` is B, and the gate is a
parameter named ``sora_gate`` of ``lora_A[adapter]``. PEFT's ``lora_B(lora_A(dropout(x))) * scaling`` is the
equation once the gate sits between the two projections, which it does in one of two ways:

* **Folded** (:class:`GateFold`, the training path of a whole model): the gates of all modules live in one
  trainable tensor (each module's ``sora_gate`` a view of its row). Before the model's forward pass, one
  multiplication over all modules at once forms ``B' = B · diag(g)`` for every module (``B`` of all modules stacked
  into one tensor, each row times its module's gate), and ``lora_B`` multiplies by its slice of ``B'``. Autograd takes
  the gradient back through that one multiplication: ``dL/dB = dL/dB' · diag(g)`` and
  ``dL/dg_i = <B[:, i], dL/dB'[:, i]>``, for all modules in a few calls. A, B and the gate tensor are ordinary leaf
  parameters that receive their gradients from autograd, so gradient clipping, gradient accumulation, DDP's
  all-reduce, checkpoints and the optimizer see the same numbers as with a gate parameter in each module. What goes
  away is the work per module and step: a gate multiply in the forward pass and, in the backward pass, two
  multiplies and the reduction of the gate's gradient over the batch (plus the dtype casts around them under
  autocast), and one gradient accumulation, clipping entry and optimizer entry per gate: a step at batch 32 on a GPU
  is bound by such per-operation costs. ``B'`` is never stored in place of B: B keeps the columns where ``g_i = 0``.
* **Per module** (:class:`GatedLinear`): ``lora_A``'s output is multiplied by ``g`` (read from the gate tensor, so the
  gradient still goes there). This runs whenever the fold does not: a LoRA layer called on its own, training with
  activation checkpointing (the recomputed forward pass must record the same operations as the first one), and a
  model whose adapters are not all on one device and dtype (there every gate is a parameter of its own).

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

from .errors import SoraError

GATE_NAME = "sora_gate"
BANK_NAME = "sora_gates"  # the GateFold submodule of the base model

# PEFT's save_pretrained takes any 1-D tensor under lora_A for an unsharded FSDP/ZeRO-3 shard; gates are 1-D by design.
warnings.filterwarnings("ignore", message=r"Adapter '.*': \d+ LoRA tensor\(s\) have invalid shape: \S*sora_gate")


def soft_threshold(x: torch.Tensor, tau: float | torch.Tensor) -> torch.Tensor:
    """The proximal operator of ``tau·||x||_1``: ``T_tau(x) = sign(x) · max(|x| - tau, 0)`` (eq. 6)."""
    return torch.sign(x) * torch.clamp(torch.abs(x) - tau, min=0)


class GatedLinear(nn.Linear):
    """LoRA's down-projection ``A`` followed by ``diag(g)``: ``forward(x) = (A·x) ⊙ g``, or ``A·x`` while the gate is
    folded into its ``lora_B`` (``sora_folded``, set by :class:`GateFold` for one forward pass). In a model with a
    :class:`GateFold` (``sora_bank``), g is read from the bank's trainable tensor, of which ``sora_gate`` is a view."""

    sora_gate: nn.Parameter
    sora_folded: bool = False
    sora_bank: GateFold | None = None
    sora_index: int = 0  # this module's row of the bank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        if self.sora_folded:
            return out
        return out * (self.sora_gate if self.sora_bank is None else self.sora_bank.gate_of(self))


class FoldedLinear(nn.Linear):
    """LoRA's up-projection: ``B·x``, or ``B'·x`` with ``B' = B·diag(g)`` in ``sora_weight`` while :class:`GateFold`
    has folded the gate in (for one forward pass)."""

    sora_weight: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight if self.sora_weight is None else self.sora_weight, self.bias)


def add_gate(
    layer: LoraLayer, adapter: str, gate_init: float | str, generator: torch.Generator | None = None
) -> GatedLinear:
    """Give the LoRA layer's ``adapter`` a gate, in place: ``lora_A`` becomes a :class:`GatedLinear` holding
    ``sora_gate``, ``lora_B`` a :class:`FoldedLinear`; their weights and state-dict keys stay. ``randn`` gates are
    drawn from ``generator`` (a CPU generator) if given, else from torch's global RNG."""
    lora_a, lora_b = layer.lora_A[adapter], layer.lora_B[adapter]
    shape, device = (lora_a.out_features,), lora_a.weight.device
    if gate_init == "randn" and generator is not None:
        gate = torch.randn(shape, generator=generator).to(device)
    elif gate_init == "randn":  # the authors' code: g ~ N(0, 1)
        gate = torch.randn(shape, device=device)
    else:
        gate = torch.full(shape, float(gate_init), device=device)
    lora_a.__class__ = GatedLinear
    lora_a.register_parameter(GATE_NAME, nn.Parameter(gate))
    lora_b.__class__ = FoldedLinear
    return lora_a


class _Cat(torch.autograd.Function):
    """``torch.cat(weights)`` whose backward pass splits the gradient in one call (autograd's takes one per input)."""

    @staticmethod
    def forward(ctx: Any, sizes: list[int], *weights: torch.Tensor) -> torch.Tensor:
        ctx.sizes = sizes
        return torch.cat(weights)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return None, *grad.split(ctx.sizes)


class GateFold(nn.Module):
    """All gates of a SoRA model in one trainable tensor, and the forward hooks that fold them into every ``lora_B``.

    ``gates`` holds the gates of all modules, one row per module in module order; each module's ``sora_gate`` is a
    view of its row (``requires_grad=False``): it always holds the current g, and state dicts, PEFT adapters and
    checkpoints keep one key per module, but only ``gates`` receives a gradient and trains. One tensor for all gates
    means one gradient accumulation, one entry in gradient clipping and one in the optimizer, whatever the number of
    modules. The bank itself is left out of state dicts (the views carry its values). Whatever gives a view storage
    of its own (a deep copy, ``.to()``, assigning ``.data``) is undone at the next use: the views' values are copied
    into ``gates`` and the views tied to it again.

    Before the forward pass (:meth:`fold`): ``B' = cat(B) * g[module of each row]``, split into one slice per module
    (each slice a view; the backward pass splits the gradient of ``cat(B)`` the same way, in one call), ``lora_B``
    uses its slice and ``lora_A`` skips the gate. After it (:meth:`unfold`, also when the pass raises), every layer
    is back to the per-module gate, so a LoRA layer called on its own never sees a fold of stale parameters.
    """

    def __init__(self, model: nn.Module, base: nn.Module) -> None:
        super().__init__()
        pairs = [(m.lora_A[a], m.lora_B[a]) for _, m, a in lora_layers(model) if isinstance(m.lora_A[a], GatedLinear)]
        # plain lists (not submodules): the layers belong to the model
        self.lora_a = [a for a, _ in pairs]
        self.lora_b = [b for _, b in pairs]
        self.shapes = [(b.out_features, b.in_features) for b in self.lora_b]
        # transformers marks the modules that can checkpoint with a ``gradient_checkpointing`` attribute
        self.checkpointable = [m for m in base.modules() if hasattr(m, "gradient_checkpointing")]
        self.rows: torch.Tensor | None = None  # module index of every row of cat(B), on B's device
        self.gates = nn.Parameter(torch.stack([a.sora_gate.detach() for a in self.lora_a]))
        for index, lora_a in enumerate(self.lora_a):
            lora_a.sora_gate.requires_grad_(False)
            object.__setattr__(lora_a, "sora_bank", self)  # not a submodule of the layer
            object.__setattr__(lora_a, "sora_index", index)
        self._tie_views()

    def _tied(self, lora_a: GatedLinear) -> bool:
        gate, bank = lora_a.sora_gate, self.gates
        start = bank.data_ptr() + lora_a.sora_index * bank.stride(0) * bank.element_size()
        return gate.dtype == bank.dtype and gate.data_ptr() == start

    @torch.no_grad()
    def tie(self) -> None:
        """Make every ``sora_gate`` a view of ``gates`` again, taking the values of those that are not."""
        if torch.compiler.is_compiling() or all(self._tied(a) for a in self.lora_a):
            return
        values = [a.sora_gate.detach() for a in self.lora_a]
        if len({(v.device, v.dtype) for v in values}) > 1:
            raise SoraError("the SoRA gates are on several devices or dtypes: move or cast the whole model")
        self.gates.data = torch.stack(values)
        self._tie_views()

    def _tie_views(self) -> None:
        for lora_a, row in zip(self.lora_a, self.gates.detach().unbind(0), strict=True):
            lora_a.sora_gate.data = row

    def gate_of(self, lora_a: GatedLinear) -> torch.Tensor:
        """``lora_a``'s gate as its row of ``gates`` (the per-module path: its gradient goes to ``gates``)."""
        if not torch.compiler.is_compiling() and not self._tied(lora_a):
            self.tie()
        return self.gates[lora_a.sora_index]

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        pass  # the views carry the values, under their modules' names

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        pass  # loading the views (in place) loads the bank

    def foldable(self, model: nn.Module, weights: list[torch.Tensor]) -> bool:
        """Whether the fold applies now: not under activation checkpointing, every B whole, on one device and dtype."""
        if model.training and torch.is_grad_enabled() and any(m.gradient_checkpointing for m in self.checkpointable):
            return False
        device, dtype = self.gates.device, weights[0].dtype
        return all(
            w.shape == shape and w.device == device and w.dtype == dtype
            for w, shape in zip(weights, self.shapes, strict=True)
        )

    def fold(self, model: nn.Module, args: Any) -> None:
        self.tie()
        weights = [b.weight for b in self.lora_b]
        if not self.foldable(model, weights):
            return
        sizes = [shape[0] for shape in self.shapes]
        if self.rows is None or self.rows.device != weights[0].device:
            counts = torch.tensor(sizes, device=weights[0].device)
            # output_size: the length is known, so torch.compile traces this without a data-dependent shape
            self.rows = torch.repeat_interleave(
                torch.arange(len(sizes), device=weights[0].device), counts, output_size=sum(sizes)
            )
        gate_rows = self.gates.index_select(0, self.rows)
        if gate_rows.dtype != weights[0].dtype:
            gate_rows = gate_rows.to(weights[0].dtype)
        folded = _Cat.apply(sizes, *weights) * gate_rows
        device = folded.device.type
        if torch.is_autocast_enabled(device):
            # one cast for every B' here: autocast caches its casts of parameters only, so F.linear would cast each
            # B' again at every call (a module called twice per forward, as DeBERTa's query and key, casts twice)
            folded = folded.to(torch.get_autocast_dtype(device))
        self._set(folded.split(sizes), True)

    def unfold(self, model: nn.Module, args: Any, output: Any) -> None:
        self._set([None] * len(self.lora_b), False)

    def _set(self, weights: list[torch.Tensor | None], folded: bool) -> None:
        # plain attributes, neither parameters nor buffers: object.__setattr__ skips nn.Module's checks (10x faster)
        for lora_a, lora_b, weight in zip(self.lora_a, self.lora_b, weights, strict=True):
            object.__setattr__(lora_a, "sora_folded", folded)
            object.__setattr__(lora_b, "sora_weight", weight)

    @torch.no_grad()
    def release(self) -> None:
        """Give every gate storage of its own and make it the trainable parameter again (the bank is going away)."""
        for lora_a in self.lora_a:
            lora_a.sora_gate.data = lora_a.sora_gate.detach().clone()
            lora_a.sora_gate.requires_grad_(True)
            object.__setattr__(lora_a, "sora_bank", None)


def attach_gate_fold(model: nn.Module, base: nn.Module) -> None:
    """Put ``model``'s gates in one :class:`GateFold`, a submodule ``sora_gates`` of ``base`` (the module that runs
    all LoRA layers: the transformers model inside a PeftModel), which folds them into B around every forward pass of
    ``base``. Gates of several shapes, devices or dtypes (a model split over devices) keep the per-module gate."""
    gate_list = gates(model)
    if not gate_list or len({(g.shape, g.device, g.dtype) for g in gate_list}) > 1:
        return
    fold = GateFold(model, base)
    base.add_module(BANK_NAME, fold)
    base.register_forward_pre_hook(fold.fold)
    base.register_forward_hook(fold.unfold, always_call=True)


def detach_gate_fold(base: nn.Module) -> None:
    """Undo :func:`attach_gate_fold` on ``base`` (before its LoRA layers are unloaded): remove the hooks and the bank;
    every gate becomes a parameter of its own that trains (the per-module gate)."""
    for hooks in (base._forward_pre_hooks, base._forward_hooks):
        for key in [k for k, hook in hooks.items() if isinstance(getattr(hook, "__self__", None), GateFold)]:
            del hooks[key]
            base._forward_hooks_always_called.pop(key, None)
    fold = base._modules.pop(BANK_NAME, None)
    if fold is not None:
        fold.release()


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoraLayer, str]]:
    """Yield ``(module name, LoRA layer, adapter name)`` for every LoRA module of ``model``, gated or not."""
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and isinstance(module.lora_A, nn.ModuleDict):
            for adapter in module.lora_A:
                yield name, module, adapter


def gates(model: nn.Module) -> list[nn.Parameter]:
    """Every gate parameter (``sora_gate``) of ``model``, in module order: each holds its module's current g."""
    return [m.lora_A[a].sora_gate for _, m, a in lora_layers(model) if isinstance(m.lora_A[a], GatedLinear)]


def gate_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters that train the gates: the one tensor of each :class:`GateFold` (all gates), else the gates."""
    banks = [m.gates for m in model.modules() if isinstance(m, GateFold)]
    return banks or gates(model)
