"""SoraConfig: the user's description of a SoRA adapter, and its translation to PEFT's LoraConfig."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from peft import LoraConfig
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

from .errors import SoraError

_BERT_LIKE = ["query", "key", "value", "intermediate.dense", "output.dense"]
_LLAMA_LIKE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# Like the paper (after AdaLoRA), SoRA adapts every weight matrix of each transformer block by default.
DEFAULT_TARGET_MODULES: dict[str, list[str]] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
    "electra": _BERT_LIKE,
    "deberta-v2": ["query_proj", "key_proj", "value_proj", "intermediate.dense", "output.dense"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    **{name: _LLAMA_LIKE for name in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2")},
}

CONFIG_NAME = "sora_config.json"


@dataclass
class SoraConfig:
    """Hyperparameters of a SoRA adapter.

    ``r_max`` is the rank every module starts from; the proximal gate step then lets each module keep only the ranks
    it needs. ``lora_alpha / r_max`` is the scale ``s`` of ``Δh = s · B · diag(g) · A · x``.
    ``target_modules=None`` picks :data:`DEFAULT_TARGET_MODULES` for the model's family (then PEFT's own table).
    ``gate_init`` is ``"randn"`` (standard-normal entries, as in the authors' code) or the starting value of every
    gate entry (1.0: the branch starts as plain LoRA). The default, None, is ``sora train``'s choice: ``"randn"``,
    unless a :class:`~sora.SparsityBudget` that ranks by contribution (its default) is attached before the first step,
    which starts every gate at 1.0 as ``sora train --target-ratio`` does (the data, not the initial sizes, then
    choose the surviving ranks: docs/budgets.md). B starts at zero, so either way the model starts as the base
    model. ``gate_seed`` draws the ``randn`` gates from a generator of their own, so that two models differ
    in their gates alone (None: torch's global RNG, as every other initialisation).
    """

    r_max: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.0
    target_modules: list[str] | str | None = None
    modules_to_save: list[str] | None = None
    task_type: str | None = None
    gate_init: float | str | None = None
    bias: str = "none"
    gate_seed: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.r_max, bool) or not isinstance(self.r_max, int) or self.r_max <= 0:
            raise SoraError(f"r_max must be a positive integer, got {self.r_max!r}")
        if not self.lora_alpha > 0:
            raise SoraError(f"lora_alpha must be > 0, got {self.lora_alpha!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise SoraError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if self.gate_init not in (None, "randn") and not isinstance(self.gate_init, int | float):
            raise SoraError(f"gate_init must be a number or 'randn', got {self.gate_init!r}")
        if self.target_modules is not None and not self.target_modules:
            raise SoraError("target_modules is empty: name at least one module, or pass None for the defaults")

    def resolve_target_modules(self, model_type: str | None) -> list[str] | str:
        """The target modules given, else the defaults for ``model_type``; a clear error for an unknown family."""
        if self.target_modules is not None:
            return self.target_modules
        targets = DEFAULT_TARGET_MODULES.get(model_type) or TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(
            model_type
        )
        if not targets:
            raise SoraError(f"no default target_modules for model type {model_type!r}: pass target_modules")
        return list(targets)

    def to_lora_config(self, model_type: str | None) -> LoraConfig:
        """The PEFT LoraConfig of the dense (unpruned) SoRA model: rank ``r_max`` everywhere."""
        return LoraConfig(
            r=self.r_max,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=self.resolve_target_modules(model_type),
            modules_to_save=self.modules_to_save,
            task_type=self.task_type,
            bias=self.bias,
            fan_in_fan_out=model_type == "gpt2",  # GPT-2's Conv1D stores weights transposed
        )

    def save(self, directory: str | Path) -> Path:
        from ._io import write_json

        return write_json(Path(directory) / CONFIG_NAME, asdict(self))

    @classmethod
    def load(cls, directory: str | Path) -> SoraConfig:
        path = Path(directory) / CONFIG_NAME
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise SoraError(f"{path}: no SoRA config here") from None
        except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as e:
            raise SoraError(f"{path}: not a SoRA config ({e})") from None
