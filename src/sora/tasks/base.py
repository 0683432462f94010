"""What a task family gives the training core (``TaskFamily``), and what every family shares.

A family is one module under ``sora/tasks/`` that reads its data, builds its model and head, collates batches and
scores: sequence classification (``classification.py``) and causal-LM instruction tuning (``causal_lm.py``). The core
(``sora.train``) reaches a family only through this interface and the registry in ``sora/tasks/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from datasets import Dataset
from transformers import AutoTokenizer

from .. import quant
from ..errors import SoraError, first_line
from ..run_config import TrainConfig


class LoadedTask(NamedTuple):
    """What a family's ``load`` returns: the task's data (its ``spec`` a dataclass with ``name``,
    ``primary_metric`` and ``validation_splits``; handed back to ``evaluate`` as ``EvalOptions.data``), the
    tokenizer, the tokenized training set, the tokenized dev splits (capped by ``max_*_samples``) and the model."""

    data: Any
    tokenizer: Any
    train_set: Dataset
    dev: dict[str, Dataset]
    model: torch.nn.Module


@dataclass(frozen=True)
class EvalOptions:
    """How to score an exported adapter: the one signature of every family's ``evaluate``.

    ``data``: the task as ``load`` returned it (inside ``sora train``), else the family reads it from ``task`` /
    ``data_dir`` / ``validation_file``, or the split ``validation_split`` of ``dataset`` (``dataset_config``: its
    hub configuration; :mod:`sora.dataset_input`). ``max_eval_samples`` and ``seed`` pick the dev subset (as
    ``sora.data.subsample`` does); ``sora.train.evaluate_adapter`` fills them and ``batch_size`` from the run when
    they are None, so that ``sora eval`` scores the examples the run scored, in the same batches. ``model_name``:
    the base model, else the one the adapter names. ``load_in_4bit``: the base in NF4 (True) or in full precision
    (False); None loads it as the run trained it (``sora_task.json``), see :meth:`base_in_4bit`.
    """

    task: str | None = None
    data: Any = None
    data_dir: str | None = None
    validation_file: str | None = None
    dataset: str | None = None
    dataset_config: str | None = None
    validation_split: str | None = None  # None: "validation"
    batch_size: int | None = None
    max_eval_samples: int | None = None
    seed: int | None = None
    model_name: str | None = None
    load_in_4bit: bool | None = None

    def __post_init__(self) -> None:
        if self.dataset is not None and self.validation_file is not None:
            raise SoraError("give --dataset or --validation-file, not both")

    def base_in_4bit(self, task: dict[str, Any]) -> bool:
        """Whether to load the base in 4 bits for the adapter whose task file is ``task``: ``load_in_4bit`` if set,
        else as the run trained (``task["load_in_4bit"]``); bitsandbytes must then be installed."""
        wanted = self.load_in_4bit if self.load_in_4bit is not None else bool(task.get("load_in_4bit", False))
        if wanted and not quant.bitsandbytes_available():
            how = "" if self.load_in_4bit else " (or --no-load-in-4bit: the full-precision base)"
            raise SoraError(f"a 4-bit base needs bitsandbytes: pip install 'sora-lora[qlora]'{how}")
        return wanted


@dataclass(frozen=True)
class TaskFamily:
    """What the shared training loop needs from a family of tasks."""

    task_type: str  # PEFT's task type
    default_model: Callable[[], str]  # the model of a run without --model
    load: Callable[[TrainConfig], LoadedTask]
    heads: Callable[[torch.nn.Module], list[str]]  # modules every method trains in full (PEFT: modules_to_save)
    baseline: Callable[[Any, list, list, str], dict[str, float]]  # (spec, train labels, dev labels, split) -> scores
    collator: Callable[[Any], Any]  # tokenizer -> the Trainer's data collator
    trainer_metrics: Callable[[Any, str], Any]  # (spec, split) -> the Trainer's compute_metrics, or None
    evaluate: Callable[[Path, EvalOptions], dict[str, float]]  # scores an exported adapter on every dev split
    # (model, tokenizer, data, encoded split, split name, batch size) -> scores: a model in memory on one split (the
    # sparsifying scheduler scores each stage's pruned model on train and dev)
    score: Callable[[torch.nn.Module, Any, Any, Dataset, str, int], dict[str, float]]


def finish_model(model: torch.nn.Module, tokenizer: Any, load_in_4bit: bool) -> torch.nn.Module:
    """A freshly loaded model made ready to train: prepared for its 4-bit base (:func:`sora.quant.prepare`) where
    it has one, and padding with the tokenizer's pad token where its config names none."""
    if load_in_4bit:
        model = quant.prepare(model)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def load_tokenizer(name: str) -> Any:
    """The tokenizer of ``name``, with the EOS token as padding where it has no pad token (GPT-2, LLaMA)."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise SoraError(f"cannot load a tokenizer from {name!r}: {first_line(e)}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
