"""Building a SoRA model on PEFT, reading its ranks and sizes, and saving/loading it unpruned (to resume training)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ._io import atomic_write
from .bank import attach_bank, gate_parameters
from .config import SoraConfig
from .errors import SoraError
from .layer import GATE_NAME, add_gate
from .modules import LoraModule, gate_vector, gated_modules, lora_modules

WEIGHTS_NAME = "sora_model.safetensors"
OPTIMIZER_NAME = "optimizer.safetensors"


def get_sora_model(model: nn.Module, config: SoraConfig) -> PeftModel:
    """Wrap ``model`` in a PEFT LoRA model of rank ``r_max`` whose every LoRA module carries a gate ``g``.

    B starts at zero (PEFT's default init), so the outputs equal the base model's at creation. Trainable: A, B, the
    gates and ``modules_to_save``. Each forward pass of the model folds all gates into B at once
    (:mod:`sora.bank`), so the step costs about what a LoRA step costs.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    lora_config = config.to_lora_config(model_type)
    try:
        with quiet_peft():
            peft_model = get_peft_model(model, lora_config)
    except ValueError as e:
        first = str(e).strip().splitlines()[0]
        raise SoraError(
            f"target_modules {lora_config.target_modules!r} do not fit this {model_type or 'model'}: {first}"
        ) from None
    generator = None if config.gate_seed is None else torch.Generator().manual_seed(config.gate_seed)
    for module in lora_modules(peft_model):
        add_gate(module.lora_a, module.lora_b, "randn" if config.gate_init is None else config.gate_init, generator)
    attach_bank(peft_model, peft_model.get_base_model())
    peft_model.sora_config = config
    return peft_model


@contextmanager
def quiet_peft() -> Iterator[None]:
    """Building or loading a ``PeftModel``, without the FutureWarning that PEFT's own read of transformers' deprecated
    ``is_gradient_checkpointing`` prints (one per model): it is no call of ours, and nothing a user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        yield


def gate_ranks(model: nn.Module) -> dict[str, int]:
    """Module name -> rank: the number of non-zero gate entries (or LoRA's ``r`` for an ungated, pruned module)."""
    modules = lora_modules(model)
    return dict(zip((m.name for m in modules), _ranks(modules), strict=True))


def _ranks(modules: list[LoraModule]) -> list[int]:
    """The rank of each module: live gate entries, read with one device sync (a sharded gate is gathered: counted on
    a shard, it would give that shard's count), or the whole ``r`` of an ungated module."""
    gates = [m.gate for m in modules if m.gate is not None]
    live = (gate_vector(gates, gathered=True) != 0).split([g.numel() for g in gates]) if gates else ()
    counts = iter(int(alive.sum()) for alive in live)
    return [next(counts) if m.gate is not None else m.lora_a.out_features for m in modules]


def rank_sizes(model: nn.Module) -> torch.Tensor:
    """Per gate entry, in the order of every gate vector (:func:`sora.modules.gated_modules`): the parameters its
    rank holds, ``d_in + d_out`` of its module (int64; empty without gates)."""
    sizes = [torch.full((m.gate.numel(),), m.rank_size, dtype=torch.int64) for m in gated_modules(model)]
    return torch.cat(sizes) if sizes else torch.zeros(0, dtype=torch.int64)


def live_params(gate_values: torch.Tensor, sizes: torch.Tensor) -> int:
    """The non-zero adapter parameters of gates ``gate_values`` (all entries, flat) whose ranks hold ``sizes``:
    ``sum_i rank_i · (d_in_i + d_out_i)``, what the pruned LoRA holds (the sparsity budget counts with it)."""
    return int(sizes[gate_values != 0].sum())


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Exact parameter counts from the shapes, in one walk of the model and one device sync.

    ``trainable``: every parameter that trains now. ``adapter``: A, B and the gates. ``nonzero``: what the pruned LoRA
    holds, ``rank · (d_in + d_out)`` summed over the modules (live gate entries, or the whole rank of a module without
    a gate: a pruned one). ``live_ranks``: those ranks, summed.
    """
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    modules = lora_modules(model)
    ranks = _ranks(modules)
    adapter = sum(p.numel() for m in modules for p in (*m.lora_a.parameters(), *m.lora_b.parameters()))
    nonzero = sum(rank * m.rank_size for rank, m in zip(ranks, modules, strict=True))
    return {"trainable": trainable, "adapter": adapter, "nonzero": nonzero, "live_ranks": sum(ranks)}


def _saved_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """What :func:`save_sora` writes: the trainable parameters, the gates under their modules' names (``sora_gate``)
    rather than the one tensor of the gate bank (:mod:`sora.bank`) that trains them."""
    banks = {id(p) for p in gate_parameters(model)}
    return {
        n: p
        for n, p in model.named_parameters()
        if (p.requires_grad and id(p) not in banks) or n.endswith(f".{GATE_NAME}")
    }


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a missing, truncated or foreign file is a one-line :class:`SoraError`."""
    path = Path(path)
    if not path.is_file():
        raise SoraError(f"{path}: no such file")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise SoraError(f"{path}: not a readable safetensors file ({e})") from None


def save_sora(model: PeftModel, directory: str | Path, optimizer: torch.optim.Optimizer | None = None) -> Path:
    """Save an unpruned SoRA model (config, A, B, gates, modules_to_save) and optionally its optimizer state.

    Everything is safetensors (tensors) plus JSON (config, the optimizer's param groups in the file's metadata).
    """
    directory = Path(directory)
    tensors = {n: p.detach().cpu().clone() for n, p in _saved_parameters(model).items()}
    atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    if optimizer is not None:
        state = optimizer.state_dict()
        tensors, scalars = {}, {}
        for index, param_state in state["state"].items():
            for key, value in param_state.items():
                target = tensors if torch.is_tensor(value) else scalars
                target[f"{index}.{key}"] = value.contiguous().cpu() if torch.is_tensor(value) else value
        metadata = {"param_groups": json.dumps(state["param_groups"]), "scalars": json.dumps(scalars)}
        atomic_write(directory / OPTIMIZER_NAME, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    model.sora_config.save(directory)
    return directory


def load_sora(model: nn.Module, directory: str | Path, optimizer_factory=None):
    """Rebuild the SoRA model that :func:`save_sora` wrote in ``directory`` on the fresh base ``model``.

    With ``optimizer_factory`` (a callable taking the SoRA model, e.g. ``lambda m: SoraOptimizer(m, lr=1e-4)``),
    the saved optimizer state is loaded into the optimizer it builds and ``(model, optimizer)`` is returned.
    """
    directory = Path(directory)
    config = SoraConfig.load(directory)
    tensors = load_safetensors(directory / WEIGHTS_NAME)
    peft_model = get_sora_model(model, config)
    load_trainable(peft_model, tensors, str(directory / WEIGHTS_NAME))
    if optimizer_factory is None:
        return peft_model
    optimizer = optimizer_factory(peft_model)
    path = directory / OPTIMIZER_NAME
    tensors = load_safetensors(path)
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    state: dict[int, dict] = {}
    for key, value in [*tensors.items(), *json.loads(metadata["scalars"]).items()]:
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    groups = json.loads(metadata["param_groups"])
    for group in groups:
        if "betas" in group:  # JSON made the tuple a list
            group["betas"] = tuple(group["betas"])
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except ValueError as e:
        raise SoraError(f"{path} does not fit this optimizer: {e}") from None
    return peft_model, optimizer


def load_trainable(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``tensors`` into ``model``'s trainable parameters; they must match by name and shape exactly."""
    params = _saved_parameters(model)
    missing, unexpected = sorted(params.keys() - tensors.keys()), sorted(tensors.keys() - params.keys())
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise SoraError(
            f"{source} does not fit this model: {what} ({len(missing)} missing, {len(unexpected)} unexpected)"
        )
    for name, param in params.items():
        if tensors[name].shape != param.shape:
            raise SoraError(
                f"{source} does not fit this model: {name} has shape {tuple(tensors[name].shape)}, "
                f"the model {tuple(param.shape)}"
            )
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(tensors[name])
