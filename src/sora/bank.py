"""The gate bank: all gates of a SoRA model in one trainable tensor, folded into every B before each forward pass.

Why: a training step at batch 32 on a GPU is bound by per-operation costs, and a gate per module costs, per module
and step, a gate multiply in the forward pass, two multiplies and a reduction over the batch in the backward pass (plus
the dtype casts around them under autocast), one gradient accumulation, one clipping entry and one optimizer entry.
The bank does that work for all modules at once:

* ``gates`` (a parameter of the :class:`GateBank`, a submodule ``sora_gates`` of the base model) holds every gate, one
  row per module in module order; each module's ``sora_gate`` is a view of its row (``requires_grad=False``): it
  always holds the current g, and state dicts, PEFT adapters and checkpoints keep one key per module, but only
  ``gates`` receives a gradient and trains.
* Before the base model's forward pass (:meth:`GateBank.fold`), one multiplication forms ``B' = B · diag(g)`` for
  every module (``B`` of all modules stacked into one tensor, each row times its module's gate), split into one
  slice per module; ``lora_B`` multiplies by its slice and ``lora_A`` skips its gate (:mod:`sora.layer`). Autograd
  takes the gradient back through that one multiplication: ``dL/dB = dL/dB' · diag(g)`` and
  ``dL/dg_i = <B[:, i], dL/dB'[:, i]>``. A, B and the bank are ordinary leaf parameters, so gradient clipping,
  accumulation, DDP's all-reduce, checkpoints and the optimizer see the same numbers as with a gate per module.
  After the pass (:meth:`GateBank.unfold`, also when it raises) every layer is back to multiplying by its gate, so
  a LoRA layer called on its own never sees a fold of stale parameters. ``B'`` is never stored in place of B: B
  keeps the columns where ``g_i = 0``.

The fold steps aside (each ``lora_A`` multiplies by its row of the bank instead, the gradient still going to the
bank) under activation checkpointing, whose recomputed forward pass must record the operations of the first one, and
whenever the B are not all whole on one device and dtype. A model whose gates differ in shape, device or dtype gets
no bank: each gate is then a parameter of its own (as under FSDP, where each gate is sharded with its layer). Both
ways compute the same function and gradients, up to float rounding.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .errors import SoraError
from .layer import GatedLinear
from .modules import gated_modules

BANK_NAME = "sora_gates"  # the GateBank submodule of the base model


class _Cat(torch.autograd.Function):
    """``torch.cat(weights)`` whose backward pass splits the gradient in one call (autograd's takes one per input)."""

    @staticmethod
    def forward(ctx: Any, sizes: list[int], *weights: torch.Tensor) -> torch.Tensor:
        ctx.sizes = sizes
        return torch.cat(weights)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return None, *grad.split(ctx.sizes)


class GateBank(nn.Module):
    """All gates of a SoRA model in one trainable tensor ``gates``, and the hooks that fold them into every B.

    The bank itself is left out of state dicts (the views carry its values). Whatever gives a view storage of its own
    (a deep copy, ``.to()``, assigning ``.data``) is undone at the next use: the views' values are copied into
    ``gates`` and the views tied to it again.
    """

    def __init__(self, model: nn.Module, base: nn.Module) -> None:
        super().__init__()
        modules = gated_modules(model)
        # plain lists (not submodules): the layers belong to the model
        self.lora_a: list[GatedLinear] = [m.lora_a for m in modules]
        self.lora_b = [m.lora_b for m in modules]
        self.shapes = [(b.out_features, b.in_features) for b in self.lora_b]
        # transformers marks the modules that can checkpoint with a ``gradient_checkpointing`` attribute
        self.checkpointable = [m for m in base.modules() if hasattr(m, "gradient_checkpointing")]
        self.rows: torch.Tensor | None = None  # module index of every row of cat(B), on B's device
        self.gates = nn.Parameter(torch.stack([m.gate.detach() for m in modules]))
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
        """``lora_a``'s gate as its row of ``gates`` (the unfolded path: its gradient goes to ``gates``)."""
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
        """Before the forward pass: every ``lora_B`` multiplies by ``B' = B · diag(g)``, every ``lora_A`` skips g."""
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
        """After the forward pass (also when it raised): every layer multiplies by its own gate again."""
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


def attach_bank(model: nn.Module, base: nn.Module) -> None:
    """Put ``model``'s gates in one :class:`GateBank`, a submodule ``sora_gates`` of ``base`` (the module that runs
    all LoRA layers: the transformers model inside a PeftModel), which folds them into B around every forward pass of
    ``base``. Gates of several shapes, devices or dtypes (a model split over devices) keep a parameter each."""
    gates = [m.gate for m in gated_modules(model)]
    if not gates or len({(g.shape, g.device, g.dtype) for g in gates}) > 1:
        return
    bank = GateBank(model, base)
    base.add_module(BANK_NAME, bank)
    base.register_forward_pre_hook(bank.fold)
    base.register_forward_hook(bank.unfold, always_call=True)


def detach_bank(base: nn.Module) -> None:
    """Undo :func:`attach_bank` on ``base`` (before its LoRA layers are unloaded): remove the hooks and the bank;
    every gate becomes a parameter of its own that trains."""
    for hooks in (base._forward_pre_hooks, base._forward_hooks):
        for key in [k for k, hook in hooks.items() if isinstance(getattr(hook, "__self__", None), GateBank)]:
            del hooks[key]
            base._forward_hooks_always_called.pop(key, None)
    bank = base._modules.pop(BANK_NAME, None)
    if bank is not None:
        bank.release()


def gate_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters that train the gates: the one tensor of each :class:`GateBank` (all gates), else the gates."""
    banks = [m.gates for m in model.modules() if isinstance(m, GateBank)]
    return banks or [m.gate for m in gated_modules(model)]
