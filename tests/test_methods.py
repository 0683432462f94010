"""The method registry (sora.methods): what each method declares, and a new method added from outside the package."""

import json

import pytest
import torch
from conftest import MINILM
from peft import PeftModel
from test_train import SPARSE, TINY
from transformers import AutoTokenizer

from sora import SoraError
from sora.cli import main
from sora.data import TASKS
from sora.methods import METHODS, Method, get_method, names, rank_pattern_from, register_method
from sora.run_config import TrainConfig
from sora.tasks.classification import load_classifier
from sora.train import evaluate_adapter


class LayerNormOnly(Method):
    """A toy method defined here, not in sora: the LayerNorm weights and the heads train, and nothing else."""

    name = "layernorm"
    default_lr = 3e-3

    def build(self, cfg, model, *, task_type, heads, total_steps, gate_bank=True, batches=None):
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
    assert names() == ["sora", "lora", "adalora", "full", "bitfit", "eva"]
    assert names("budget") == names("schedule") == ["sora"]
    assert names("fsdp") == ["sora", "lora"]
    assert names("load_in_4bit") == ["sora", "lora", "adalora"]
    assert names("decoders") == ["sora", "lora", "adalora", "full", "eva"]
    assert names("rank_pattern") == ["lora"]
    assert [get_method(n).max_rank(4) for n in names()] == [4, 4, 6, None, None, 8]
    assert {n: get_method(n).default_lr for n in names()} == {
        "sora": 1e-3, "lora": 1e-3, "adalora": 5e-3, "full": 5e-5, "bitfit": 1e-3, "eva": 2e-4
    }  # fmt: skip
    with pytest.raises(SoraError, match="unknown method 'dora'; known methods: sora, lora, adalora, full, bitfit, eva"):
        get_method("dora")


def test_eva_moves_ranks_across_modules_and_its_adapter_reloads_in_plain_peft(tmp_path, glue_dir):
    """EVA on MiniLM and RTE: the SVD of each module's inputs gives the modules different ranks within the budget
    (r per module on average), and the saved adapter is a plain PEFT LoRA adapter with the same outputs."""
    out = tmp_path / "eva"
    argv = ["train", "--task", "rte", "--method", "eva", "--data-dir", str(glue_dir), "--output-dir", str(out)]
    assert main([*argv, *TINY]) == 0  # TINY: --r 4
    metrics = json.loads((out / "metrics.json").read_text())
    ranks = metrics["ranks"]
    assert len(set(ranks.values())) > 1 and max(ranks.values()) <= 8  # moved, within rho * r
    assert sum(ranks.values()) == 4 * 36  # EVA keeps the budget: r ranks per target module on average
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["rank_pattern"]
    spec = TASKS["rte"]
    tokenizer = AutoTokenizer.from_pretrained(out / "adapter")
    batch = tokenizer(["a man sleeps", "it rains"], ["a man is awake", "it is wet"], return_tensors="pt", padding=True)
    reloaded = PeftModel.from_pretrained(load_classifier(MINILM, spec, tokenizer), out / "adapter").eval()
    got = {
        n: m.lora_A["default"].out_features
        for n, m in reloaded.get_base_model().named_modules()
        if hasattr(m, "lora_A") and "default" in m.lora_A
    }
    assert got == ranks
    scores = evaluate_adapter(out / "adapter", data_dir=str(glue_dir))  # the files score as the run reported
    assert scores["accuracy"] == metrics["eval"]["accuracy"]
    with torch.no_grad():
        assert torch.isfinite(reloaded(**batch).logits).all()


def test_lora_trains_exactly_the_ranks_of_a_sora_run(tmp_path, glue_dir):
    common = ["--task", "rte", "--data-dir", str(glue_dir), *TINY]
    assert main(["train", "--output-dir", str(tmp_path / "sora"), *common, *SPARSE]) == 0
    found = json.loads((tmp_path / "sora" / "ranks.json").read_text())["ranks"]
    assert 0 < sum(found.values()) < 4 * 36  # the SoRA run pruned
    lora = tmp_path / "lora"
    assert (
        main(
            [
                "train",
                "--method",
                "lora",
                "--rank-pattern-from",
                str(tmp_path / "sora"),
                "--output-dir",
                str(lora),
                *common,
            ]
        )
        == 0
    )
    metrics = json.loads((lora / "metrics.json").read_text())
    assert metrics["ranks"] == {name: rank for name, rank in found.items() if rank > 0}
    config = json.loads((lora / "adapter" / "adapter_config.json").read_text())
    scales = {config["alpha_pattern"][k] / r for k, r in config["rank_pattern"].items()}
    assert scales == {16 / 4}  # every module at the scale lora_alpha / r, as the SoRA run's pruned adapter
    # the run's metrics.json (a benchmark's result file has its ranks too) gives the same pattern
    from_json = rank_pattern_from(str(tmp_path / "sora" / "metrics.json"), 4, 16)
    assert from_json == rank_pattern_from(str(tmp_path / "sora"), 4, 16)


def test_lora_at_ranks_above_its_r_trains_and_records_them(tmp_path, glue_dir):
    """A SoRA run of r_max 8 retrained at LoRA r=4's scale (the front's pattern runs): modules of rank 8 and 1 train,
    and ranks.json (and its heatmap) spans rank 8."""
    names = [f"bert.encoder.layer.{i}.attention.self.{m}" for i in range(6) for m in ("query", "value")]
    source = tmp_path / "source.json"
    source.write_text(json.dumps({"ranks": {n: 8 if k % 2 else 1 for k, n in enumerate(names)}}))
    out = tmp_path / "lora"
    argv = ["train", "--method", "lora", "--rank-pattern-from", str(source), "--output-dir", str(out)]
    assert main([*argv, "--task", "rte", "--data-dir", str(glue_dir), *TINY]) == 0
    saved = json.loads((out / "ranks.json").read_text())
    assert saved["r_max"] == 8 and sorted(set(saved["ranks"].values())) == [1, 8]
    assert (out / "ranks.png").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--method", "sora", "--rank-pattern-from", "x"], "--rank-pattern-from is for --method lora, not 'sora'"),
        (["--method", "lora", "--rank-pattern-from", "nowhere"], "--rank-pattern-from nowhere: no ranks.json there"),
        (["--method", "eva", "--load-in-4bit"], "--method eva trains base weights; use sora, lora, adalora"),
    ],
)
def test_bad_method_options_are_one_line(tmp_path, capsys, glue_dir, argv, message):
    out = tmp_path / "run"
    assert main(["train", "--task", "rte", "--data-dir", str(glue_dir), "--output-dir", str(out), *TINY, *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()
