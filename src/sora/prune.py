"""Pruning: turn a trained SoRA model into a plain PEFT LoRA model of per-module ranks (Section 3.2 of the paper).

For a module with gate ``g`` and live ranks ``L = {i : g_i != 0}``::

    A' = A[L, :],   B' = B[:, L] · diag(g[L]),   r' = |L|,   alpha' = lora_alpha · r' / r_max

so ``alpha' / r' = lora_alpha / r_max`` and PEFT's own scaling reproduces ``s · B · diag(g) · A`` exactly. A module
whose gate is all zero keeps no adapter at all.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import SAFETENSORS_WEIGHTS_NAME, ModulesToSaveWrapper, get_peft_model_state_dict
from safetensors.torch import save_file

from ._io import atomic_write
from .bank import detach_bank
from .errors import SoraError
from .model import quiet_peft
from .modules import gated_modules

_GATED_KEYS = ("lora_A.weight", "lora_A.sora_gate", "lora_B.weight")  # a SoRA module's keys in PEFT's state dict


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


def _pruned_factors(model: PeftModel, caller: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Module name -> ``(A', B')`` of every module that keeps a rank (the module docstring's formula)."""
    if not hasattr(model, "sora_config"):
        raise SoraError(f"{caller}() needs a SoRA model from sora.get_sora_model")
    pruned: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for module in gated_modules(model):
        gate, b = module.gate.detach(), module.lora_b.weight.detach()
        live = gate != 0
        if live.any():
            pruned[module.name] = (module.lora_a.weight.detach()[live].clone(), b[:, live] * gate[live].to(b.dtype))
    if not pruned:
        raise SoraError("every gate is zero: no LoRA module survives pruning (lower xi)")
    return pruned


@torch.no_grad()
def prune(model: PeftModel) -> PeftModel:
    """Delete the dead ranks of every SoRA module and fold the gate into B; returns a plain PEFT LoRA model.

    The SoRA model is consumed (its base model is reused); :func:`save_pruned` writes the same adapter and leaves the
    model as it is. Outputs before and after agree to float rounding. ``save_pretrained`` on the result writes a
    standard LoRA adapter.
    """
    pruned = _pruned_factors(model, "prune")
    config = pruned_config(model, {n: a.shape[0] for n, (a, _) in pruned.items()})
    # The trained modules_to_save (heads) stay: PEFT 0.22's unload() puts a wrapper's original module back (0.21's
    # its trained copy), so the trained copy becomes the original one first.
    for wrapper in model.modules():
        if isinstance(wrapper, ModulesToSaveWrapper) and wrapper.active_adapters:
            wrapper.original_module = wrapper.modules_to_save[wrapper.active_adapter]
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


def save_pruned(model: PeftModel, directory: str | Path) -> Path:
    """Write the adapter that ``prune(model).save_pretrained(directory)`` writes (``adapter_config.json`` and
    ``adapter_model.safetensors``, a standard LoRA adapter for ``PeftModel.from_pretrained``) without consuming
    ``model``, which can go on training; nothing is copied but the adapter's tensors. Returns ``directory``."""
    pruned = _pruned_factors(model, "save_pruned")
    config = pruned_config(model, {n: a.shape[0] for n, (a, _) in pruned.items()})
    dense = model.peft_config[model.active_adapter]
    config.base_model_name_or_path, config.inference_mode = dense.base_model_name_or_path, True
    prefix = "base_model.model."  # PEFT's keys: the module's name in the PeftModel, without the adapter's
    gated = {f"{prefix}{m.name}.{part}" for m in gated_modules(model) for part in _GATED_KEYS}
    tensors = {k: v for k, v in get_peft_model_state_dict(model).items() if k not in gated}
    for name, (a, b) in pruned.items():
        tensors[f"{prefix}{name}.lora_A.weight"], tensors[f"{prefix}{name}.lora_B.weight"] = a, b
    directory = Path(directory)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(directory / SAFETENSORS_WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    config.save_pretrained(str(directory))
    return directory


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
