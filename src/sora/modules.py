"""The LoRA modules of a model, found in one place: each with its name, A, B and (a SoRA module's) gate, and all the
gates as one flat vector.

Every walk over a model's adapter goes through :func:`lora_modules`; the gated ones are those whose ``gate`` is set.
Under FSDP (``sora train --fsdp``) a gate is a DTensor holding this process's shard of it: :func:`gate_vector` says
explicitly whether it reads the shards (``gathered=False``) or the whole gates (``gathered=True``, a collective that
every process must call).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import torch
from torch import nn

from .layer import GatedLinear


class LoraModule(NamedTuple):
    """One adapted weight: its LoRA layer's ``lora_A`` (A, r × d_in) and ``lora_B`` (B, d_out × r) of one adapter,
    and the gate g of a SoRA module (None for a plain LoRA module, e.g. a pruned one)."""

    name: str  # relative to the transformers model inside a PeftModel: the names target_modules use
    lora_a: nn.Linear
    lora_b: nn.Linear
    gate: nn.Parameter | None

    @property
    def rank_size(self) -> int:
        """The parameters one rank holds: a row of A and a column of B, ``d_in + d_out``."""
        return self.lora_a.in_features + self.lora_b.out_features


def lora_modules(model: nn.Module) -> list[LoraModule]:
    """Every LoRA module of ``model`` (one per adapter of each LoRA layer), gated or not, in module order."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    prefix = "base_model.model." if isinstance(model, PeftModel) else ""
    found = []
    for name, layer in model.named_modules():
        if isinstance(layer, LoraLayer) and isinstance(layer.lora_A, nn.ModuleDict):
            for adapter, lora_a in layer.lora_A.items():
                gate = lora_a.sora_gate if isinstance(lora_a, GatedLinear) else None
                found.append(LoraModule(name.removeprefix(prefix), lora_a, layer.lora_B[adapter], gate))
    return found


def gated_modules(model: nn.Module) -> list[LoraModule]:
    """The SoRA modules of ``model``: those with a gate, in module order (the order of every gate vector)."""
    return [m for m in lora_modules(model) if m.gate is not None]


def gate_vector(gates: Iterable[torch.Tensor], *, gathered: bool) -> torch.Tensor:
    """``gates`` as one flat float32 CPU vector, in their order (one device-to-host copy): each gate whole
    (``gathered=True``; a sharded gate is gathered, a collective) or this process's shard of it (``gathered=False``)."""
    take = full if gathered else local
    return torch.cat([take(g.detach()).reshape(-1) for g in gates]).float().cpu()


def is_sharded(tensor: Any) -> bool:
    """Whether ``tensor`` is a DTensor (a shard of a tensor spread over the processes)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch without distributed support
        return False
    return isinstance(tensor, DTensor)


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor: ``tensor`` itself, or the gathered DTensor (a collective) as a plain tensor."""
    if not is_sharded(tensor):
        return tensor
    from torch.distributed._functional_collectives import AsyncCollectiveTensor

    value = tensor.full_tensor()
    # the gather may still be in flight: its storage is not the tensor's until waited on (reading it crashes)
    return value.wait() if isinstance(value, AsyncCollectiveTensor) else value


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part of ``tensor``: its shard of a DTensor, else the tensor itself."""
    return tensor.to_local() if is_sharded(tensor) else tensor
