"""4-bit base models (QLoRA: NF4 with double quantization, bitsandbytes) for the adapter methods.

``--load-in-4bit`` loads the base model's linear layers in 4 bits (NF4, double quantization; the compute dtype is
bf16 on CUDA, fp32 on CPU, where bitsandbytes runs NF4 too). The trained heads (the task family's ``heads``: a
classifier and the backbone's pooler) stay out of the quantization, so they train in full precision; a causal LM
keeps transformers' default skips (its LM head and tied embeddings). PEFT then puts its bitsandbytes LoRA layers
(``peft.tuners.lora.bnb.Linear4bit``) on the quantized layers, and SoRA's gate sits on their ``lora_A`` as on a dense
layer's (:mod:`sora.layer`). The pruned adapter is a plain PEFT adapter: it loads onto the 4-bit base and onto the
full-precision one (it was trained against the dequantized NF4 weights, so there its outputs differ by the
quantization error of the base; docs/qlora.md).

Merging: PEFT's ``merge_and_unload`` on a 4-bit base dequantizes each weight, adds the adapter's delta and quantizes
the sum to NF4 again, which rounds most of the (small) delta away. :func:`sora.prune.merge` refuses that and merges
into a full-precision base.

bitsandbytes 0.50 logs a warning when it is imported on a CPU with AVX512-BF16 and cannot load its NF4 kernel from
the hub through the optional ``kernels`` package (not installed, or offline: then ``kernels`` logs a line of its own
about the publisher check it skips), and PEFT imports it whenever it is installed, so every ``import peft`` would
print them, 4 bits or not. :func:`quiet_bitsandbytes` (run by ``import sora``) holds those lines back; a 4-bit model
on the CPU then says once, in one line, what they mean (:func:`prepare`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from typing import Any

from .errors import SoraError

# The import-time lines held back: (logger, what its message names). bitsandbytes' failed kernel load; the `kernels`
# package's skipped publisher check of bitsandbytes' kernel repository (offline).
_HELD = (
    ("bitsandbytes.backends.cpu.ops", "kernels"),
    ("kernels._internals.hf_hub", "kernels-community/quantization-bitsandbytes"),
)
KERNELS_NOTE = (
    "sora: note: 4-bit on the CPU runs bitsandbytes' plain CPU kernels: its faster NF4 matmul comes from the "
    "`kernels` package, which downloads it from the Hugging Face hub (not installed or not reachable here)"
)


class _KernelsWarning(logging.Filter):
    """Holds back a logger's import-time warnings that name ``marker``, remembering that one came."""

    seen = False
    noted = False

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker

    def filter(self, record: logging.LogRecord) -> bool:
        if self.marker in record.getMessage():
            _KernelsWarning.seen = True
            return False
        return True


def quiet_bitsandbytes() -> None:
    """Install the filters on the loggers of ``_HELD`` (before bitsandbytes is imported: a logger is the same object
    before and after its module creates it)."""
    for name, marker in _HELD:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _KernelsWarning) for f in logger.filters):
            logger.addFilter(_KernelsWarning(marker))


def bitsandbytes_available() -> bool:
    """Whether bitsandbytes can be imported (looked up, not imported)."""
    try:
        return importlib.util.find_spec("bitsandbytes") is not None
    except (ImportError, ValueError):  # a module hidden as None in sys.modules, or one without a spec
        return False


def check_4bit(fsdp: bool = False) -> None:
    """Refuse what ``--load-in-4bit`` cannot do, in one line: sharding, and a machine without bitsandbytes (the
    methods that train an adapter on a 4-bit base: ``TrainConfig`` checks them)."""
    if fsdp:
        raise SoraError("--load-in-4bit does not shard: drop --fsdp (4-bit weights are not sharded here)")
    if not bitsandbytes_available():
        raise SoraError("--load-in-4bit needs bitsandbytes: pip install 'sora-lora[qlora]' (bitsandbytes>=0.45)")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def quantization_config(skip_modules: list[str] | None = None) -> Any:
    """NF4 with double quantization; compute in bf16 on CUDA, fp32 on CPU. ``skip_modules``: full module names kept
    in full precision (transformers matches them from the start, ``bert.pooler`` covers ``bert.pooler.dense``, or as
    a suffix); None keeps transformers' defaults (the output embeddings, tied weights, the last module)."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if _cuda() else torch.float32,
        llm_int8_skip_modules=list(skip_modules) if skip_modules else None,
    )


def load_kwargs(skip_modules: list[str] | None = None) -> dict[str, Any]:
    """``from_pretrained``'s keyword arguments for a 4-bit base: the quantization config and the whole model on one
    device (this process's GPU, else the CPU; a 4-bit model is placed at load time, never moved after)."""
    device: int | str = int(os.environ.get("LOCAL_RANK", "0")) if _cuda() else "cpu"
    return {"quantization_config": quantization_config(skip_modules), "device_map": {"": device}}


def prepare(model: Any) -> Any:
    """A freshly loaded 4-bit model, ready for an adapter: PEFT's ``prepare_model_for_kbit_training`` freezes it and
    casts its fp16/bf16 weights that stay unquantized (norms, embeddings, heads) to fp32, as QLoRA does. It is asked
    not to turn on gradient checkpointing: that stays ``--gradient-checkpointing``'s choice (it costs a forward pass
    per step, and SoRA's one-tensor gate fold gives way to the per-module gate under it, :mod:`sora.layer`)."""
    from peft import prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    for module in model.modules():
        # bitsandbytes packs a 4-bit weight in place into a CPU inference layout at its first no-grad forward pass in
        # eval mode, and from then on computes it with an op that has no backward: training after an evaluation
        # (the Trainer's epochs) would lose every gradient through the base layers. Kept off, evaluation computes
        # what training computes.
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    if _KernelsWarning.seen and not _KernelsWarning.noted and not _cuda():
        _KernelsWarning.noted = True
        print(KERNELS_NOTE, file=sys.stderr)
    return model


quiet_bitsandbytes()  # at import: `import sora` imports this module before anything imports peft
