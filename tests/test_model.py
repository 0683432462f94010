import pytest
import torch
from conftest import FAMILIES, bert12, example_inputs, gates, gpt2, model_output
from safetensors.torch import load_file
from transformers import BertConfig, BertForSequenceClassification

import sora
import sora.bank
from sora.config import DEFAULT_TARGET_MODULES


@pytest.mark.parametrize("family", list(FAMILIES))
def test_outputs_at_creation_equal_the_base_model(family):
    build, task_type = FAMILIES[family]
    base = build()
    x = example_inputs(family)
    reference = model_output(base, x)
    model = sora.get_sora_model(base, sora.SoraConfig(task_type=task_type))
    assert torch.equal(model_output(model, x), reference)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names, "nothing trains"
    for name in names - {"base_model.model.sora_gates.gates"}:
        assert "lora_A" in name or "lora_B" in name or "modules_to_save" in name, name
    # every module shows its gate as a parameter sora_gate; one vector trains them all
    gate_names = [n for n, _ in model.named_parameters() if n.endswith(".sora_gate")]
    assert len(gate_names) == len(sora.gate_ranks(model)) > 0
    (bank,) = sora.bank.gate_parameters(model)
    assert bank.requires_grad and bank.numel() == sum(g.numel() for g in gates(model))


def test_default_targets_cover_every_weight_matrix_of_a_block():
    model = sora.get_sora_model(bert12(), sora.SoraConfig(task_type="SEQ_CLS"))
    kinds = {name.split("layer.")[1].split(".", 1)[1] for name in sora.gate_ranks(model)}
    assert kinds == {
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    }
    assert len(sora.gate_ranks(model)) == 12 * 6
    gpt = sora.get_sora_model(gpt2(), sora.SoraConfig(task_type="CAUSAL_LM"))
    assert {n.split(".", 3)[3] for n in sora.gate_ranks(gpt)} == {
        "attn.c_attn",
        "attn.c_proj",
        "mlp.c_fc",
        "mlp.c_proj",
    }
    assert "bert" in DEFAULT_TARGET_MODULES and "llama" in DEFAULT_TARGET_MODULES


def test_count_parameters_is_exact_from_shapes():
    model = sora.get_sora_model(bert12(), sora.SoraConfig(r_max=4, task_type="SEQ_CLS"))
    # per layer: q, k, v, attn-out (32 -> 32), intermediate (32 -> 64), output (64 -> 32); hidden 32
    per_layer = 4 * (32 + 32) * 4 + 2 * (32 + 64) * 4
    gates = 12 * 6 * 4
    counts = sora.count_parameters(model)
    assert counts["nonzero"] == 12 * per_layer
    assert counts["adapter"] == 12 * per_layer + gates
    assert counts["trainable"] == counts["adapter"] + 32 * 2 + 2  # + the classification head
    layer0 = "bert.encoder.layer.0.intermediate.dense"
    gate = model.base_model.model.get_submodule(layer0).lora_A["default"].sora_gate
    with torch.no_grad():
        gate[:3] = 0
    assert sora.gate_ranks(model)[layer0] == 1
    assert sora.count_parameters(model)["nonzero"] == 12 * per_layer - 3 * (32 + 64)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"r_max": 0}, "r_max must be a positive integer"),
        ({"r_max": -2}, "r_max must be a positive integer"),
        ({"r_max": 2.5}, "r_max must be a positive integer"),
        ({"lora_alpha": 0}, "lora_alpha must be > 0"),
        ({"lora_dropout": 1.0}, "lora_dropout must be in"),
        ({"target_modules": []}, "target_modules is empty"),
        ({"gate_init": "zeros"}, "gate_init must be a number or 'randn'"),
    ],
)
def test_bad_configs(kwargs, message):
    with pytest.raises(sora.SoraError, match=message):
        sora.SoraConfig(**kwargs)


@pytest.mark.parametrize("targets", [["no_such_module"], "nothing\\.matches\\.this"])
def test_targets_that_match_nothing_are_a_clear_error(targets):
    with pytest.raises(sora.SoraError, match="do not fit this bert"):
        sora.get_sora_model(bert12(), sora.SoraConfig(target_modules=targets))


def test_unknown_family_without_targets_is_a_clear_error():
    with pytest.raises(sora.SoraError, match="no default target_modules for model type None"):
        sora.get_sora_model(torch.nn.Sequential(torch.nn.Linear(4, 4)), sora.SoraConfig())


def test_save_and_load_unpruned_with_optimizer_state(tmp_path):
    model = sora.get_sora_model(bert12(), sora.SoraConfig(r_max=4, task_type="SEQ_CLS"))
    opt = sora.SoraOptimizer(model, lr=0.05, xi=0.3)
    x = example_inputs("bert12")
    for _ in range(3):
        opt.zero_grad()
        model(**x, labels=torch.tensor([0, 1, 1])).loss.backward()
        opt.step()
    opt.set_xi(0.7)
    sora.save_sora(model, tmp_path, opt)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "optimizer.safetensors",
        "sora_config.json",
        "sora_model.safetensors",
    ]
    saved = load_file(tmp_path / "sora_model.safetensors")  # a gate per module, as before the gates shared a tensor
    assert sum(k.endswith(".sora_gate") for k in saved) == len(sora.gate_ranks(model))
    assert not any("sora_gates" in k for k in saved)
    loaded, loaded_opt = sora.load_sora(bert12(), tmp_path, lambda m: sora.SoraOptimizer(m, lr=0.05))
    assert torch.equal(model_output(loaded, x), model_output(model, x))
    assert sora.gate_ranks(loaded) == sora.gate_ranks(model)
    assert loaded_opt.xi == 0.7
    # one more step from both gives the same weights: the optimizer moments came back
    for m, o in ((model, opt), (loaded, loaded_opt)):
        o.zero_grad()
        m(**x, labels=torch.tensor([0, 1, 1])).loss.backward()
        o.step()
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), loaded.named_parameters(), strict=True):
        assert n1 == n2
        torch.testing.assert_close(p1, p2)


def test_loading_into_another_model_or_a_broken_file_is_a_clear_error(tmp_path):
    model = sora.get_sora_model(bert12(), sora.SoraConfig(r_max=4, task_type="SEQ_CLS"))
    sora.save_sora(model, tmp_path)
    wider = BertForSequenceClassification(
        BertConfig(vocab_size=100, hidden_size=48, num_hidden_layers=12, num_attention_heads=4, intermediate_size=64)
    )
    with pytest.raises(sora.SoraError, match="does not fit this model: .* has shape"):
        sora.load_sora(wider, tmp_path)
    with pytest.raises(sora.SoraError, match="does not fit this model: missing"):
        sora.load_sora(gpt2(), tmp_path)
    weights = tmp_path / "sora_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(sora.SoraError, match="not a readable safetensors file"):
        sora.load_sora(bert12(), tmp_path)
    with pytest.raises(sora.SoraError, match="no SoRA config here"):
        sora.load_sora(bert12(), tmp_path / "missing")
