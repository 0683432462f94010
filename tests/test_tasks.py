"""The task-family registry: a family written outside the package trains through ``sora.train`` with no change to
the core, and every family is reached by task name."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import word_tokenizer
from datasets import Dataset
from transformers import BertConfig, BertForSequenceClassification, DataCollatorWithPadding

from sora import SoraError
from sora.run_folder import load_exported
from sora.schedule import run_schedule
from sora.tasks import (
    FAMILIES,
    EvalOptions,
    LoadedTask,
    TaskFamily,
    causal_lm,
    classification,
    register_family,
    task_family,
)
from sora.train import TrainConfig, evaluate_adapter, train

TARGET = 1.0  # every example's label: the family is regression on a constant feature


@dataclass(frozen=True)
class ConstantSpec:
    name: str = "constant"
    primary_metric: str = "loss"
    validation_splits: tuple[str, ...] = ("validation",)


@dataclass
class ConstantData:
    spec: ConstantSpec
    dev: Dataset


def _dataset(tokenizer, n: int) -> Dataset:
    ids = tokenizer("copy a b c")["input_ids"]  # the same feature in every example
    return Dataset.from_dict({"input_ids": [ids] * n, "attention_mask": [[1] * len(ids)] * n, "labels": [TARGET] * n})


def _regressor(name: str) -> torch.nn.Module:
    return BertForSequenceClassification.from_pretrained(name)


@torch.no_grad()
def _mse(model: torch.nn.Module, tokenizer, dataset: Dataset) -> float:
    model.eval()
    batch = DataCollatorWithPadding(tokenizer)([dataset[i] for i in range(len(dataset))])
    labels = batch.pop("labels")
    return float(((model(**batch).logits.squeeze(-1) - labels) ** 2).mean())


@pytest.fixture
def constant_family(tmp_path):
    """A regression family defined here, registered with one line, removed after the test."""
    base = tmp_path / "base"
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=1,
        problem_type="regression",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    BertForSequenceClassification(config).save_pretrained(base)
    tokenizer = word_tokenizer()

    def load(cfg: TrainConfig) -> LoadedTask:
        data = ConstantData(ConstantSpec(), _dataset(tokenizer, 16))
        return LoadedTask(data, tokenizer, _dataset(tokenizer, 64), {"validation": data.dev}, _regressor(cfg.model))

    def evaluate(adapter: Path, options: EvalOptions) -> dict[str, float]:
        model = load_exported(adapter, options.model_name, _regressor)
        dev = options.data.dev if options.data is not None else _dataset(tokenizer, 16)
        return {"loss": _mse(model, tokenizer, dev)}

    family = TaskFamily(
        task_type="SEQ_CLS",
        default_model=lambda: str(base),
        load=load,
        heads=lambda model: ["classifier"],  # trained in full, as a classification head is
        baseline=lambda spec, train_labels, dev_labels, split: {"loss": float(np.var(dev_labels))},
        collator=DataCollatorWithPadding,
        trainer_metrics=lambda spec, split: None,
        evaluate=evaluate,
        score=lambda model, tokenizer, data, dataset, split, batch: {"loss": _mse(model, tokenizer, dataset)},
    )
    register_family("constant", family)
    yield family, base, tokenizer
    del FAMILIES["constant"]


@pytest.mark.parametrize("method", ["sora", "lora"])
def test_a_family_defined_outside_the_package_trains_through_the_core(tmp_path, constant_family, method):
    _, base, tokenizer = constant_family
    before = _mse(_regressor(str(base)), tokenizer, _dataset(tokenizer, 16))
    out = tmp_path / "run"
    cfg = TrainConfig(task="constant", output_dir=str(out), method=method, lr=5e-2, epochs=10, batch_size=16)
    metrics = train(cfg)
    assert metrics["model"] == str(base)  # the family's default model
    assert metrics["eval"]["loss"] < 0.1 * before, (before, metrics["eval"])
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert len(metrics["ranks"]) == 2 * 6  # every weight matrix of both BERT layers is adapted
    assert evaluate_adapter(out / "adapter") == pytest.approx(metrics["eval"], rel=1e-6)


def test_the_sparsifying_scheduler_runs_a_family_defined_outside_the_package(tmp_path, constant_family):
    """`run_schedule` reaches the family through its interface alone: load, collator and score (here the MSE)."""
    out = tmp_path / "schedule"
    cfg = TrainConfig(task="constant", output_dir=str(out), lr=5e-2, batch_size=16)
    rows = run_schedule(cfg, [0.0, 0.0], 2.0, targets=[0.5, 0.25])["stages"]
    assert [set(row["dev"]) for row in rows] == [{"loss"}, {"loss"}] and rows[0]["train"]["loss"] >= 0
    assert rows[1]["nonzero_params"] < rows[0]["nonzero_params"] <= rows[0]["target_params"]
    assert evaluate_adapter(out / "adapters" / "stage_2") == pytest.approx(rows[1]["dev"], rel=1e-6)


def test_task_names_reach_their_families():
    assert task_family("sst2") is classification.FAMILY
    assert task_family("custom") is classification.FAMILY
    assert task_family("causal-lm") is causal_lm.FAMILY
    with pytest.raises(SoraError, match=r"unknown task 'imdb'; known tasks: cola, .*custom, causal-lm"):
        task_family("imdb")
