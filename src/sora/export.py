"""Adapters for LLM servers: ``sora export --uniform-rank`` rewrites a pruned adapter with one rank for every module.

``sora train`` exports SoRA as a PEFT LoRA adapter with per-module ranks: top-level ``r = r_max`` and
``lora_alpha``, and ``rank_pattern`` / ``alpha_pattern`` with ``alpha_i / r_i = lora_alpha / r`` for every module
(``sora.prune``). Loaders that scale every module by the top-level ``lora_alpha / r`` and take the ranks from the
tensor shapes (vLLM) read it right. Loaders that take the top-level ``lora_alpha`` alone and divide it by each
module's own rank (llama.cpp: ``convert_lora_to_gguf.py`` stores one alpha, the runtime scale is ``alpha / rank``
of each tensor) would scale a module of rank ``r_i < r`` by ``r / r_i`` too much. For them, ``uniform_rank`` pads
every module with zero ranks up to ``R``, the largest live rank of any module (A gains zero rows, B zero columns),
and writes ``r = R``, ``lora_alpha = R · lora_alpha / r``, no patterns: every module keeps the scale
``lora_alpha / r`` and the outputs stay the same.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from .errors import SoraError
from .model import load_safetensors

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def adapter_folder(run_dir: Path) -> Path:
    """The adapter of a run folder (``RUN_DIR/adapter``), or ``run_dir`` itself when it is an adapter folder."""
    if not run_dir.exists():
        raise SoraError(f"{run_dir} does not exist: give a run folder or an adapter folder")
    if not run_dir.is_dir():
        raise SoraError(f"{run_dir} is not a folder: give a run folder or an adapter folder")
    for folder in (run_dir / "adapter", run_dir):
        if (folder / ADAPTER_CONFIG).is_file():
            return folder
    raise SoraError(f"{run_dir}: no LoRA adapter here (no {ADAPTER_CONFIG}; full fine-tuning exports a whole model)")


def _module_scale(config: dict, folder: Path) -> float:
    """``lora_alpha / r``, after checking that every module of the adapter has that same scale."""
    if config.get("peft_type") != "LORA" or config.get("use_rslora") or config.get("use_dora"):
        raise SoraError(f"{folder}: not a plain LoRA adapter (peft_type {config.get('peft_type')}): nothing to pad")
    r, alpha = config["r"], config["lora_alpha"]
    ranks, alphas = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    for pattern in {*ranks, *alphas}:
        if not math.isclose(alphas.get(pattern, alpha) / ranks.get(pattern, r), alpha / r, rel_tol=1e-9):
            raise SoraError(f"{folder}: module {pattern!r} has another lora_alpha / r than the adapter's")
    return alpha / r


def uniform_rank(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Write ``run_dir``'s adapter padded to one rank into ``output`` (default: ``RUN_DIR/adapter-uniform-rank``).

    The other files of the adapter folder (tokenizer, ``sora_task.json``) are copied, so ``sora eval`` reads the
    result too. The folder appears whole or not at all.
    """
    run_dir = Path(run_dir)
    folder = adapter_folder(run_dir)
    output = Path(output) if output is not None else folder.with_name(f"{folder.name}-uniform-rank")
    if output.exists() and not (output / ADAPTER_CONFIG).is_file() and any(output.iterdir()):
        raise SoraError(f"{output} exists and is not an adapter folder: choose another --output")
    config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    scale = _module_scale(config, folder)
    tensors = load_safetensors(folder / ADAPTER_WEIGHTS)
    ranks = [t.shape[0] for name, t in tensors.items() if name.endswith("lora_A.weight")]
    if not ranks:
        raise SoraError(f"{folder}: the adapter holds no lora_A weights")
    rank = max(ranks)
    padded = {}
    for name, tensor in tensors.items():
        if name.endswith("lora_A.weight"):  # (r_i, d_in): zero rows
            tensor = torch.cat([tensor, tensor.new_zeros(rank - tensor.shape[0], tensor.shape[1])])
        elif name.endswith("lora_B.weight"):  # (d_out, r_i): zero columns
            tensor = torch.cat([tensor, tensor.new_zeros(tensor.shape[0], rank - tensor.shape[1])], dim=1)
        padded[name] = tensor.contiguous()
    config.update(r=rank, lora_alpha=scale * rank, rank_pattern={}, alpha_pattern={})

    staging = output.with_name(f".{output.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(folder, staging, ignore=shutil.ignore_patterns(ADAPTER_CONFIG, ADAPTER_WEIGHTS))
    (staging / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    save_file(padded, str(staging / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    shutil.rmtree(output, ignore_errors=True)
    staging.rename(output)
    return output
