"""Pruning: turn a trained SoRA model into a plain PEFT LoRA model of per-module ranks (Section 3.2 of the paper).

For a module with gate ``g`` and live ranks ``L = {i : g_i != 0}``::

    A' = A[L, :],   B' = B[:, L] · diag(g[L]),   r' = |L|,   alpha' = lora_alpha · r' / r_max

so ``alpha' / r' = lora_alpha / r_max`` and PEFT's own scaling reproduces ``s · B · diag(g) · A`` exactly. A module
whose gate is all zero keeps no adapter at all.
"""

from __future__ import annotations

import re

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from .bank import detach_bank
from .errors import SoraError
from .model import quiet_peft
from .modules import gated_modules


def _pattern(name: str) -> str:
    """A PEFT pattern key that matches exactly this module (``layer.1`` never matches ``layer.11``)."""
    return re.escape(name)


def pruned_config(model: PeftModel, ranks: dict[str, int]) -> LoraConfig:
    """The LoraConfig of the pruned model: one rank and one alpha per live module."""
    sora, dense = model.sora_config, model.peft_config[model.active_adapter]
    return LoraConfig(
        r=sora.r_max,
        lora_alpha=sora.lora_alpha,
        lora_dropout=sora.lora_dropout,
        target_modules=sorted(ranks),
        rank_pattern={_pattern(n): r for n, r in ranks.items()},
        alpha_pattern={_pattern(n): sora.lora_alpha * r / sora.r_max for n, r in ranks.items()},
        modules_to_save=dense.modules_to_save,
        task_type=dense.task_type,
        bias=dense.bias,
        fan_in_fan_out=dense.fan_in_fan_out,
    )


@torch.no_grad()
def prune(model: PeftModel) -> PeftModel:
    """Delete the dead ranks of every SoRA module and fold the gate into B; returns a plain PEFT LoRA model.

    The SoRA model is consumed (its base model is reused); ``copy.deepcopy`` it first to keep training it. Outputs
    before and after agree to float rounding. ``save_pretrained`` on the result writes a standard LoRA adapter.
    """
    if not hasattr(model, "sora_config"):
        raise SoraError("prune() needs a SoRA model from sora.get_sora_model")
    pruned: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for module in gated_modules(model):
        gate, b = module.gate.detach(), module.lora_b.weight
        live = gate != 0
        if live.any():
            pruned[module.name] = (module.lora_a.weight[live].clone(), b[:, live] * gate[live].to(b.dtype))
    if not pruned:
        raise SoraError("every gate is zero: no LoRA module survives pruning (lower xi)")
    config = pruned_config(model, {n: a.shape[0] for n, (a, _) in pruned.items()})
    detach_bank(model.get_base_model())
    base = model.unload()
    with torch.random.fork_rng(devices=[]), quiet_peft():  # PEFT's init of the new layers must not move the RNG
        result = get_peft_model(base, config)
    inner = result.get_base_model()
    for name, (a, b) in pruned.items():
        layer = inner.get_submodule(name)
        adapter = result.active_adapter
        layer.lora_A[adapter].weight.copy_(a)
        layer.lora_B[adapter].weight.copy_(b)
    return result


def merge(model: PeftModel) -> torch.nn.Module:
    """Merge a LoRA adapter into its base and return the plain transformers model (a SoRA model is pruned first).

    A 4-bit base is refused: PEFT's ``merge_and_unload`` would re-quantize the merged weights to NF4 and round most of
    the adapter's delta away. Load the base in full precision, load the adapter onto it, and merge that.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base, "is_loaded_in_4bit", False):
        raise SoraError(
            "cannot merge into a 4-bit base: NF4 would round the adapter away; load the base in full precision, "
            "load the adapter onto it (PeftModel.from_pretrained) and merge that"
        )
    if hasattr(model, "sora_config"):
        model = prune(model)
    if not hasattr(model, "merge_and_unload"):
        raise SoraError("merge() needs a PEFT LoRA model (a PeftModel)")
    return model.merge_and_unload()
