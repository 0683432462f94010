"""The method registry (sora.methods): what each method declares, and a new method added from outside the package."""

import json

import pytest
from test_train import TINY

from sora import SoraError
from sora.cli import main
from sora.methods import METHODS, Method, get_method, names, register_method
from sora.run_config import TrainConfig


class LayerNormOnly(Method):
    """A toy method defined here, not in sora: the LayerNorm weights and the heads train, and nothing else."""

    name = "layernorm"
    default_lr = 3e-3

    def build(self, cfg, model, *, task_type, heads, total_steps, gate_bank=True):
        for name, param in model.named_parameters():
            param.requires_grad_(any(name.startswith(f"{head}.") for head in heads) or "LayerNorm" in name)
        return model, None


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setattr("sora.methods.METHODS", dict(METHODS))  # registered for this test alone
    register_method(LayerNormOnly())
    return get_method("layernorm")


def test_a_new_method_trains_through_sora_train_without_touching_the_package(toy, tmp_path, glue_dir):
    out = tmp_path / "run"
    argv = ["train", "--task", "rte", "--method", "layernorm", "--data-dir", str(glue_dir), "--output-dir", str(out)]
    assert main([*argv, *TINY]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "layernorm" and metrics["hyperparameters"]["lr"] == toy.default_lr
    assert metrics["ranks"] == {}  # the base Method has no ranks
    # what it trains: 6 layers x 2 LayerNorms + the embeddings' (weight and bias) + pooler and classifier
    assert metrics["nonzero_params"] == metrics["trainable_params"] > metrics["head_params"]
    assert (out / "adapter").is_dir()


def test_a_method_is_refused_what_it_does_not_support(toy, tmp_path):
    with pytest.raises(SoraError, match="--target-ratio / --target-params are for --method sora, not 'layernorm'"):
        TrainConfig(task="rte", output_dir=str(tmp_path), method="layernorm", target_ratio=0.5)
    with pytest.raises(SoraError, match="--fsdp trains --method sora or lora, not 'layernorm'"):
        TrainConfig(task="rte", output_dir=str(tmp_path), method="layernorm", fsdp=True)
    with pytest.raises(SoraError, match="--method layernorm trains base weights; use sora, lora, adalora"):
        TrainConfig(task="rte", output_dir=str(tmp_path), method="layernorm", load_in_4bit=True)


def test_the_registry_names_what_each_method_supports():
    assert names() == ["sora", "lora", "adalora", "full", "bitfit"]
    assert names("budget") == names("schedule") == ["sora"]
    assert names("fsdp") == ["sora", "lora"]
    assert names("load_in_4bit") == ["sora", "lora", "adalora"]
    assert names("decoders") == ["sora", "lora", "adalora", "full"]
    assert [get_method(n).max_rank(4) for n in names()] == [4, 4, 6, None, None]
    assert {n: get_method(n).default_lr for n in names()} == {
        "sora": 1e-3, "lora": 1e-3, "adalora": 5e-3, "full": 5e-5, "bitfit": 1e-3
    }  # fmt: skip
    with pytest.raises(SoraError, match="unknown method 'dora'; known methods: sora, lora, adalora, full, bitfit"):
        get_method("dora")
