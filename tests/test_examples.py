"""The scripts in examples/ run as written (their ``main(argv)``, in process): each trains a few steps on CPU, saves
its pruned adapter, and that adapter reloads in plain PEFT with the trained model's outputs. The decoder examples run
on a tiny random Llama for the embedded SmolLM2 (one conversion and 135M parameters would take minutes here); the
TRL example also lands its budget as ``sora train --target-ratio`` does, with the same allocation."""

from __future__ import annotations

import importlib.util
import json
import sys
import warnings

import pytest
import torch
from conftest import REPO, llama, word_tokenizer
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

import sora
from sora.allocation import gate_vectors, init_overlap
from sora.budget import budget_target
from sora.cli import main as sora_main


def _example(name: str):
    """``examples/<name>.py`` as a module."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "examples" / f"{name}.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    """A tiny random Llama of 6 layers with its word tokenizer, saved as a model folder. At r_max 8 one rank holds at
    most 96 of its 24,576 adapter parameters: a budget of 0.5 can land within 1%."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    llama(seed=1, initializer_range=0.2, num_hidden_layers=6).save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    return folder


def _assert_reloads(result, base) -> PeftModel:
    """The example's adapter on ``base`` in plain PEFT, checked to give the trained model's outputs."""
    reloaded = PeftModel.from_pretrained(base, result["adapter"]).eval()
    with torch.no_grad():
        logits = reloaded(**result["probe"]).logits
    torch.testing.assert_close(logits, result["logits"], atol=1e-5, rtol=1e-5)
    return reloaded


def _assert_lands(nonzero: int, target: int) -> None:
    assert 0.99 * target <= nonzero <= target, (nonzero, target)


def test_trl_sft_lands_its_budget_with_the_clis_allocation(tmp_path, decoder):
    """The TRL example (SFTTrainer, chat records, a budget of 0.5 at the Python API's defaults) and ``sora train
    --task causal-lm --target-ratio 0.5`` on the same model: the same target, both within 1% below it, and both with
    the learned allocation (gates started equal, so the survivors' overlap with the largest initial gates is
    chance, and the top-up by contribution)."""
    result = _example("trl_sft").main([str(tmp_path / "trl"), "--model", str(decoder), "--steps", "20"])
    _assert_reloads(result, AutoModelForCausalLM.from_pretrained(decoder))
    trainer = result["trainer"]
    target, nonzero = budget_target(trainer.optimizer), sora.count_parameters(trainer.model)["nonzero"]
    _assert_lands(nonzero, target)
    allocation = init_overlap(*gate_vectors(trainer.model, trainer.optimizer))
    assert allocation["overlap"] == pytest.approx(allocation["chance"]) and allocation["chance"] < 0.9

    records = [{"messages": _example("trl_sft").chat(*pair)} for pair in _example("trl_sft").PAIRS]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records * 6), encoding="utf-8")
    cli = tmp_path / "cli"
    argv = ["train", "--task", "causal-lm", "--model", str(decoder), "--train-file", str(data)]
    with warnings.catch_warnings():  # sora train attaches its budget for the Trainer's own max_steps
        warnings.filterwarnings("error", "the sparsity budget was attached")
        assert sora_main([*argv, "--validation-file", str(data), "--batch-size", "4", "--epochs", "2"] +
                         ["--target-ratio", "0.5", "--output-dir", str(cli)]) == 0  # fmt: skip
    metrics = json.loads((cli / "metrics.json").read_text())
    assert metrics["target_params"] == target
    _assert_lands(metrics["nonzero_params"], target)
    assert metrics["allocation"]["overlap"] == pytest.approx(metrics["allocation"]["chance"])
    assert metrics["hyperparameters"]["gate_init"] == 1.0 == trainer.model.sora_config.gate_init
    assert metrics["hyperparameters"]["budget_score"] == "contribution"
    assert trainer.optimizer.optimizer.gate_group["budget_score"] == "contribution"


def test_hf_trainer_trains_minilm_and_its_adapter_reloads(tmp_path, minilm_path):
    result = _example("hf_trainer").main([str(tmp_path), "--steps", "10"])
    _assert_reloads(result, AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2))
    rows = [row for row in result["trainer"].state.log_history if "loss" in row]
    assert rows and {"xi", "live_ranks", "nonzero_params"} <= rows[-1].keys()


def test_accelerate_loop_lands_its_budget_and_its_adapter_reloads(tmp_path, decoder):
    result = _example("accelerate_loop").main([str(tmp_path), "--model", str(decoder), "--steps", "20"])
    _assert_reloads(result, AutoModelForCausalLM.from_pretrained(decoder))
    _assert_lands(sora.count_parameters(result["model"])["nonzero"], budget_target(result["optimizer"]))


def test_torch_loop_prunes_to_its_budget_and_its_adapter_reloads(tmp_path, minilm_path):
    result = _example("torch_loop").main([str(tmp_path), "--steps", "8"])
    reloaded = _assert_reloads(result, AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2))
    assert 0 < sora.count_parameters(reloaded)["nonzero"] <= result["target"]
