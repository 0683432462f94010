"""``sora export --gguf``: a run's adapter as a llama.cpp LoRA GGUF, with its per-module ranks, no llama.cpp checkout.

The file is what llama.cpp's ``convert_lora_to_gguf.py`` writes from a PEFT LoRA adapter, with the ``gguf`` package
that script uses, for the architectures in :data:`ARCHITECTURES`:

- tensor names: the GGUF name of the adapted base weight, as ``convert_hf_to_gguf.py`` maps base weights (gguf's
  ``TensorNameMap``), plus ``.lora_a`` / ``.lora_b``: ``model.layers.3.self_attn.q_proj`` gives
  ``blk.3.attn_q.weight.lora_a`` and ``blk.3.attn_q.weight.lora_b``;
- shapes in torch order: ``lora_a`` is A, ``(r_i, d_in)``, ``lora_b`` is B, ``(d_out, r_i)`` (ggml ``ne`` reversed);
- Llama and Mistral: ``convert_hf_to_gguf.py`` (``LlamaModel.modify_tensors``) permutes the rows of ``q_proj`` and
  ``k_proj`` into llama.cpp's rotary layout (``LlamaModel.permute``), and its ``LoraTorchTensor`` turns that into the
  same permutation of the rows of B, A unchanged. Qwen2 and Qwen3 permute nothing;
- metadata: ``general.architecture``, ``general.type = adapter``, ``adapter.type = lora``, ``adapter.lora.alpha``.

One difference, on purpose: the converter stores the top-level ``lora_alpha``, and llama.cpp's runtime scales each
pair by ``alpha / rank`` with the rank of that pair's tensors (``llama_adapter_lora_weight::get_scale``), so a module
pruned to ``r_i < r`` would get ``r / r_i`` times its scale. Here ``adapter.lora.alpha`` is 0, for which llama.cpp
scales every pair by 1 (times the user's ``--lora-scaled`` factor), and each module's own PEFT scale
(``alpha_i / r_i``, or ``alpha_i / sqrt(r_i)`` with rsLoRA) is folded into its B: ``B' · A = scale_i · B · A``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._io import atomic_write
from .errors import SoraError, first_line
from .export import ADAPTER_CONFIG, ADAPTER_WEIGHTS, adapter_folder
from .model import load_safetensors
from .run_folder import TASK_FILE

CAUSAL_LM = "causal-lm"  # sora.tasks.causal_lm.TASK (not imported: that pulls in the datasets stack)
GGUF_MAGIC = b"GGUF"

# Hugging Face architecture -> (gguf MODEL_ARCH member, whether q_proj / k_proj rows are permuted), as llama.cpp's
# convert_hf_to_gguf.py registers them: LlamaModel (llama, permutes), Qwen2Model (qwen2), Qwen3Model (qwen3).
# SmolLM (v1, v2) and TinyLlama are LlamaForCausalLM.
ARCHITECTURES: dict[str, tuple[str, bool]] = {
    "LlamaForCausalLM": ("LLAMA", True),
    "LLaMAForCausalLM": ("LLAMA", True),
    "MistralForCausalLM": ("LLAMA", True),
    "Qwen2ForCausalLM": ("QWEN2", False),
    "Qwen3ForCausalLM": ("QWEN3", False),
}
_PREFIX = "base_model.model."


def _gguf():
    try:
        import gguf
    except ImportError:
        raise SoraError("sora export --gguf needs the gguf package: pip install gguf") from None
    return gguf


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SoraError(f"{path}: no such file ({what})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SoraError(f"{path}: not a readable {what} ({first_line(e)})") from None
    if not isinstance(value, dict):
        raise SoraError(f"{path}: not a readable {what} (not a JSON object)")
    return value


def _check_task(folder: Path, config: dict[str, Any]) -> None:
    """A causal-LM adapter: ``sora_task.json`` names task causal-lm (or, without one, PEFT's task type fits)."""
    if (folder / TASK_FILE).is_file():
        task = _read_json(folder / TASK_FILE, "task file")
        name = (task.get("spec") or {}).get("name")
        if name != CAUSAL_LM:
            raise SoraError(
                f"{folder}: a run of task {name!r}; --gguf exports causal-lm (decoder) adapters, llama.cpp has no "
                "classification heads"
            )
    elif config.get("task_type") not in (None, "CAUSAL_LM"):
        raise SoraError(f"{folder}: a {config['task_type']} adapter; --gguf exports causal-lm (decoder) adapters")
    if config.get("peft_type") != "LORA" or config.get("use_dora"):
        kind = "DoRA" if config.get("use_dora") else config.get("peft_type")
        raise SoraError(f"{folder}: not a plain LoRA adapter ({kind}): llama.cpp adapters hold LoRA pairs only")
    if config.get("modules_to_save"):
        raise SoraError(f"{folder}: the adapter saves whole modules ({config['modules_to_save']}): not a LoRA pair")


def _base_config(name: str | None, folder: Path) -> dict[str, Any]:
    """The base model's ``config.json``: from a model folder, a config.json file, or the hub cache (a hub name)."""
    if not name:
        raise SoraError(f"{folder}: {ADAPTER_CONFIG} names no base model (base_model_name_or_path): pass --model")
    path = Path(name)
    if path.is_dir():
        return _read_json(path / "config.json", "base model config")
    if path.is_file():
        return _read_json(path, "base model config")
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name:
        raise SoraError(f"base model {name!r}: no such folder (pass --model with the base model's folder)")
    try:
        from huggingface_hub import hf_hub_download

        config_file = hf_hub_download(name, "config.json")
    except Exception as e:  # offline, unknown repo, no access: one line either way
        raise SoraError(f"base model {name!r}: cannot read its config.json ({first_line(e)}); pass --model") from None
    return _read_json(Path(config_file), "base model config")


def _architecture(hparams: dict[str, Any], name: str) -> tuple[str, bool]:
    archs = hparams.get("architectures") or []
    arch = archs[0] if archs else hparams.get("model_type")
    if arch not in ARCHITECTURES:
        raise SoraError(
            f"base model {name!r} is {arch}: --gguf maps the tensor names of {', '.join(sorted(ARCHITECTURES))}"
        )
    return ARCHITECTURES[arch]


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's ``get_pattern_key``: the first pattern that matches the end of ``module`` at a dot boundary."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _pairs(tensors: dict[str, torch.Tensor], folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Module name (as in target_modules) -> its ``A`` and ``B``, in the adapter file's order."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = re.fullmatch(rf"{re.escape(_PREFIX)}(.+)\.lora_([AB])\.weight", key)
        if match is None:
            what = "an embedding LoRA" if "lora_embedding" in key else "not a LoRA pair tensor"
            raise SoraError(f"{folder}: {ADAPTER_WEIGHTS} holds {key} ({what}): llama.cpp cannot load it")
        if tensor.dim() != 2:
            raise SoraError(f"{folder}: {key} has shape {tuple(tensor.shape)}, not a matrix")
        pairs.setdefault(match[1], {})[match[2]] = tensor
    if not pairs:
        raise SoraError(f"{folder}: the adapter holds no LoRA weights")
    for module, pair in pairs.items():
        if set(pair) != {"A", "B"}:
            raise SoraError(f"{folder}: module {module} has lora_{''.join(pair)} but not its pair")
        if pair["A"].shape[0] != pair["B"].shape[1]:
            a, b = tuple(pair["A"].shape), tuple(pair["B"].shape)
            raise SoraError(f"{folder}: module {module} has lora_A {a} and lora_B {b}: the ranks differ")
    return pairs


def rotary_permute(rows: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's ``LlamaModel.permute`` of a q/k projection's output rows (``n_head``: the heads of that
    projection): within each head, the two rotary halves are interleaved."""
    return rows.reshape(n_head, 2, rows.shape[0] // n_head // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def gguf_tensors(
    config: dict[str, Any], tensors: dict[str, torch.Tensor], hparams: dict[str, Any], folder: Path
) -> tuple[str, list[tuple[str, np.ndarray]]]:
    """The GGUF architecture name and the ``(name, array)`` pairs of the adapter, scales folded into B."""
    gguf = _gguf()
    base = config.get("base_model_name_or_path")
    arch_member, permute = _architecture(hparams, str(base))
    arch = getattr(gguf.MODEL_ARCH, arch_member, None)
    if arch is None:
        raise SoraError(f"the installed gguf package knows no {arch_member.lower()} models: pip install -U gguf")
    try:
        n_blocks = int(hparams["num_hidden_layers"])
        n_head = int(hparams["num_attention_heads"])
        n_kv = int(hparams.get("num_key_value_heads") or n_head)
        head_dim = int(hparams.get("head_dim") or int(hparams["hidden_size"]) // n_head)
    except (KeyError, TypeError, ValueError) as e:
        raise SoraError(f"base model {base!r}: its config.json lacks {first_line(e)}") from None
    names = gguf.get_tensor_name_map(arch, n_blocks)
    r, alpha = config.get("r"), config.get("lora_alpha")
    ranks, alphas = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    out: list[tuple[str, np.ndarray]] = []
    for module, pair in _pairs(tensors, folder).items():
        a, b = pair["A"].float(), pair["B"].float()
        rank = a.shape[0]
        if _pattern_value(ranks, module, r) != rank:
            raise SoraError(
                f"{folder}: {ADAPTER_CONFIG} gives module {module} rank {_pattern_value(ranks, module, r)}, "
                f"its tensors rank {rank}"
            )
        module_alpha = _pattern_value(alphas, module, alpha)
        if not isinstance(module_alpha, int | float):
            raise SoraError(f"{folder}: {ADAPTER_CONFIG} gives module {module} no lora_alpha")
        scale = module_alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)
        name = names.get_name(f"{module}.weight", try_suffixes=(".weight", ".bias"))
        if name is None:
            raise SoraError(f"{folder}: module {module} has no tensor in llama.cpp's {gguf.MODEL_ARCH_NAMES[arch]}")
        if name.startswith("output.") and hparams.get("tie_word_embeddings"):
            raise SoraError(f"{folder}: module {module} is tied to the token embeddings: llama.cpp has no tensor")
        heads = {"q_proj": n_head, "k_proj": n_kv}.get(module.rsplit(".", 1)[-1])
        if heads is not None and b.shape[0] != heads * head_dim:
            raise SoraError(
                f"{folder}: module {module} has {b.shape[0]} output rows, the base model {base!r} "
                f"{heads} heads of {head_dim}: the adapter does not fit it"
            )
        b = b * scale
        if permute and heads is not None:
            b = rotary_permute(b, heads)
        out.append((f"{name}.lora_a", a.contiguous().numpy()))
        out.append((f"{name}.lora_b", b.contiguous().numpy()))
    return gguf.MODEL_ARCH_NAMES[arch], out


def _write(path: str, arch: str, tensors: list[tuple[str, np.ndarray]]) -> None:
    gguf = _gguf()
    writer = gguf.GGUFWriter(path, arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 0.0)  # 0: llama.cpp scales each pair by 1; scales are in B
    for name, array in tensors:
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def export_gguf(run_dir: str | Path, output: str | Path | None = None, base_model: str | None = None) -> Path:
    """Write ``run_dir``'s adapter as a llama.cpp LoRA GGUF to ``output`` (default: ``RUN_DIR/adapter.gguf``).

    ``base_model`` (a model folder, its config.json, or a hub name) gives the architecture, head counts and layer
    count; default: the adapter's ``base_model_name_or_path``. The file appears whole or not at all, and every
    check runs before anything is written.
    """
    _gguf()
    folder = adapter_folder(Path(run_dir))
    output = Path(output) if output is not None else folder.with_name(f"{folder.name}.gguf")
    if output.is_dir():
        raise SoraError(f"{output} is a folder: --output names the .gguf file to write")
    if output.exists():
        with open(output, "rb") as f:
            if f.read(4) != GGUF_MAGIC:
                raise SoraError(f"{output} exists and is not a GGUF file: choose another --output")
    config = _read_json(folder / ADAPTER_CONFIG, "adapter config")
    _check_task(folder, config)
    if base_model is not None:
        config = {**config, "base_model_name_or_path": base_model}
    hparams = _base_config(config.get("base_model_name_or_path"), folder)
    arch, tensors = gguf_tensors(config, load_safetensors(folder / ADAPTER_WEIGHTS), hparams, folder)
    return atomic_write(output, lambda tmp: _write(tmp, arch, tensors))
