"""Sharded parameters (FSDP2): what ``sora train --fsdp`` needs of a model whose parameters are DTensor shards.

:func:`shard_model` applies torch's FSDP2 (``torch.distributed.fsdp.fully_shard``) itself, to every transformer block
and then the whole model, on CPU (gloo) as on GPUs: accelerate's FSDP plugin shards only on accelerators (on CPU it
falls back to DDP), and the Trainer accepts a model that arrives sharded (``is_distributed_loading_by_transformers``: it
neither wraps it in DDP nor shards it again). Every parameter is then a ``DTensor`` holding a slice of its rows on each
process. The gates are per-module parameters there (the gate bank, :mod:`sora.bank`, steps aside:
:meth:`sora.methods.Method.build`), so each gate is sharded with its block, and the proximal step is elementwise: it
runs on the shards as is. What reads whole tensors gathers them here: the live-rank counts of the log rows, the NaN
check of every step, the checkpoints (written in the one-process format: ``adapter_model.safetensors`` and a whole
``optimizer.pt``, on rank 0) and the export at the end (:func:`unshard_adapter`). Every function that gathers is a
collective: every process must call it, in the same order.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import nn

from .errors import SoraError
from .modules import full, is_sharded


def any_everywhere(flag: bool, like: list[torch.Tensor]) -> bool:
    """``flag`` or'ed over the processes where ``like`` holds DTensors (one all-reduce), else ``flag`` itself."""
    if not any(is_sharded(t) for t in like):
        return flag
    import torch.distributed as dist

    value = torch.tensor([int(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def fsdp_launched() -> bool:
    """Whether ``accelerate launch --use_fsdp`` (or an accelerate config with FSDP) started this process."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true", "yes")


def zero_stage_launched() -> str | None:
    """The ZeRO stage (``"2"``, ``"3"``, ...) that ``accelerate launch --use_deepspeed`` started this process with, or
    None without DeepSpeed (or a stage it does not say)."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() not in ("1", "true", "yes"):
        return None
    stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    config = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if stage is None and config and config.endswith(".json") and os.path.isfile(config):
        with open(config, encoding="utf-8") as f:
            try:
                stage = str(json.load(f).get("zero_optimization", {}).get("stage"))
            except (ValueError, AttributeError):
                stage = None
    return stage


# what goes wrong under each ZeRO stage sora train refuses (docs/distributed.md)
_ZERO_REFUSED = {
    "2": "the Trainer hands DeepSpeed's wrapper of SoRA's optimizer around: the log loses xi and the live ranks, and "
    "the final scoring stops, as transformers runs ZeRO inference under stage 3 only",
    "3": "SoRA's optimizer and gates are hidden in its partitions",
}


def check_fsdp(fsdp: bool, budgeted: bool) -> bool:
    """Whether a run (with a sparsity budget: ``budgeted``) shards its parameters (``fsdp``: ``--fsdp``); a setting
    it cannot run is a one-line :class:`SoraError` (the methods that shard: ``TrainConfig`` checks them)."""
    stage = zero_stage_launched()
    if stage in _ZERO_REFUSED:
        raise SoraError(f"DeepSpeed ZeRO-{stage} does not run sora train ({_ZERO_REFUSED[stage]}): shard with --fsdp")
    if fsdp_launched():
        raise SoraError(
            "sora train shards with its own --fsdp: launch with torchrun or accelerate launch --multi_gpu, "
            "not accelerate's --use_fsdp"
        )
    if not fsdp:
        return False
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        raise SoraError("--fsdp shards the parameters over several processes: launch with torchrun or accelerate")
    if budgeted:
        raise SoraError("--target-ratio / --target-params do not run with --fsdp (the budget reads whole gates)")
    return True


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of ``model``: the modules of the classes its ``_no_split_modules`` names, else the
    entries of every ``nn.ModuleList`` of two or more modules of one class (BERT's ``encoder.layer``)."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    if names:
        return [m for m in model.modules() if type(m).__name__ in names]
    return [
        block
        for module in model.modules()
        if isinstance(module, nn.ModuleList) and len(module) > 1 and len({type(m) for m in module}) == 1
        for block in module
    ]


def shard_model(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    """Shard ``model``'s parameters over all processes with FSDP2, in place: one FSDP unit per transformer block (its
    parameters are gathered for its forward and backward pass alone), one for the rest. ``optimizer`` (built on the
    unsharded parameters, before any step) is switched to the shards, by parameter name."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    names = {id(p): n for n, p in model.named_parameters()}
    device = next(model.parameters()).device
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for block in _blocks(model):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    if optimizer is not None:
        shards = dict(model.named_parameters())
        for group in optimizer.param_groups:
            group["params"] = [shards[names[id(p)]] for p in group["params"]]


def _saved(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters a checkpoint and the export hold: the trainable ones and the gates."""
    from .layer import GATE_NAME

    return {n: p for n, p in model.named_parameters() if p.requires_grad or n.endswith(f".{GATE_NAME}")}


def gathered_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters and the gates of ``model``, whole, on CPU, by their state-dict names (a collective)."""
    _reshard(model)
    return {name: full(param.detach()).cpu() for name, param in _saved(model).items()}


def _reshard(model: nn.Module) -> None:
    """Register the shards again where a forward pass left whole parameters (the root unit keeps them after its
    forward pass: an evaluation leaves them, in buffers that the next step frees)."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


@torch.no_grad()
def unshard_adapter(model: nn.Module) -> None:
    """Make the trainable parameters and the gates of the sharded ``model`` whole plain parameters, in place (a
    collective). After it, the adapter reads as in one process (ranks, pruning, export); the frozen backbone stays
    sharded. For the end of training: the model trains no further."""
    _reshard(model)
    for name, param in _saved(model).items():
        if is_sharded(param):
            owner, _, attr = name.rpartition(".")
            module = model.get_submodule(owner)
            module._parameters[attr] = nn.Parameter(full(param.detach()), requires_grad=param.requires_grad)


def gathered_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` with every DTensor gathered whole onto CPU: the one-process format (a collective)."""
    state = optimizer.state_dict()
    return {
        "state": {
            index: {key: full(value).cpu() if torch.is_tensor(value) else value for key, value in entry.items()}
            for index, entry in state["state"].items()
        },
        "param_groups": state["param_groups"],
    }


def shard_optimizer_state(optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
    """A whole optimizer state (:func:`gathered_optimizer_state`) cut to this process's shards of ``optimizer``'s
    DTensor parameters, matched by position as ``load_state_dict`` matches them; other values stay."""
    from torch.distributed.tensor import distribute_tensor

    params = [p for group in optimizer.param_groups for p in group["params"]]
    saved = [i for group in state_dict["param_groups"] for i in group["params"]]
    by_id = dict(zip(saved, params, strict=False))
    state = {}
    for index, entry in state_dict["state"].items():
        param = by_id.get(index)
        state[index] = {
            key: distribute_tensor(value.to(param.dtype), param.device_mesh, param.placements, src_data_rank=None)
            if is_sharded(param) and torch.is_tensor(value) and value.shape == param.shape
            else value
            for key, value in entry.items()
        }
    return {"state": state, "param_groups": state_dict["param_groups"]}
