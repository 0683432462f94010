import pytest
import torch
from conftest import FAMILIES, bert12, example_inputs, gates, model_output, trained_like
from peft import PeftModel
from safetensors.torch import load_file

import sora
import sora.bank
from sora.layer import GatedLinear


@pytest.mark.parametrize("family", list(FAMILIES))
def test_prune_export_reload_and_merge_keep_the_outputs(family, tmp_path):
    build, task_type = FAMILIES[family]
    model = trained_like(sora.get_sora_model(build(), sora.SoraConfig(r_max=4, task_type=task_type)))
    x = example_inputs(family)
    expected = model_output(model, x)
    ranks = sora.gate_ranks(model)
    nonzero = sora.count_parameters(model)["nonzero"]

    pruned = sora.prune(model)
    assert isinstance(pruned, PeftModel)
    assert not any("sora_gate" in n for n, _ in pruned.named_parameters())
    assert not any(isinstance(m, GatedLinear) for m in pruned.modules())
    torch.testing.assert_close(model_output(pruned, x), expected, rtol=1e-5, atol=1e-5)
    live = {n: r for n, r in ranks.items() if r > 0}
    assert sora.gate_ranks(pruned) == live
    assert sora.count_parameters(pruned)["nonzero"] == nonzero

    pruned.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_config.json").is_file()
    saved = load_file(tmp_path / "adapter_model.safetensors")
    lora_numel = sum(t.numel() for k, t in saved.items() if "lora_" in k)
    assert lora_numel == nonzero
    reloaded = PeftModel.from_pretrained(build(), tmp_path).eval()
    torch.testing.assert_close(model_output(reloaded, x), expected, rtol=1e-5, atol=1e-5)
    merged = reloaded.merge_and_unload()
    assert not isinstance(merged, PeftModel)
    torch.testing.assert_close(model_output(merged, x), expected, rtol=1e-5, atol=1e-5)


def test_layer_1_and_layer_11_keep_their_own_ranks(tmp_path):
    model = sora.get_sora_model(bert12(), sora.SoraConfig(r_max=8, task_type="SEQ_CLS"))
    trained_like(model, dead=0.0)
    inner = model.base_model.model
    with torch.no_grad():
        inner.get_submodule("bert.encoder.layer.1.attention.self.query").lora_A["default"].sora_gate[2:] = 0
        inner.get_submodule("bert.encoder.layer.11.attention.self.query").lora_A["default"].sora_gate[5:] = 0
    x = example_inputs("bert12")
    expected = model_output(model, x)
    sora.prune(model).save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(bert12(), tmp_path).eval()
    ranks = sora.gate_ranks(reloaded)
    assert ranks["bert.encoder.layer.1.attention.self.query"] == 2
    assert ranks["bert.encoder.layer.11.attention.self.query"] == 5
    assert ranks["bert.encoder.layer.10.attention.self.query"] == 8
    torch.testing.assert_close(model_output(reloaded, x), expected, rtol=1e-5, atol=1e-5)


def test_a_module_with_an_all_zero_gate_keeps_no_adapter(tmp_path):
    model = trained_like(sora.get_sora_model(bert12(), sora.SoraConfig(r_max=4, task_type="SEQ_CLS")))
    dead = "bert.encoder.layer.3.output.dense"
    with torch.no_grad():
        model.base_model.model.get_submodule(dead).lora_A["default"].sora_gate.zero_()
    x = example_inputs("bert12")
    expected = model_output(model, x)
    pruned = sora.prune(model)
    assert dead not in sora.gate_ranks(pruned)
    assert isinstance(pruned.base_model.model.get_submodule(dead), torch.nn.Linear)
    torch.testing.assert_close(model_output(pruned, x), expected, rtol=1e-5, atol=1e-5)
    pruned.save_pretrained(tmp_path)
    assert not any(dead in k for k in load_file(tmp_path / "adapter_model.safetensors"))


def test_prune_refuses_all_dead_and_non_sora_models():
    model = sora.get_sora_model(bert12(), sora.SoraConfig(r_max=4))
    with torch.no_grad():
        for p in gates(model):
            p.zero_()
    with pytest.raises(sora.SoraError, match="every gate is zero"):
        sora.prune(model)
    with pytest.raises(sora.SoraError, match="needs a SoRA model"):
        sora.prune(bert12())


@pytest.mark.parametrize("family", ["minilm", "llama"])
def test_save_pruned_writes_what_prune_saves_and_keeps_the_model(family, tmp_path):
    """``sora.save_pruned``: the tensors ``prune(model).save_pretrained`` writes (a dead module left out, the
    classifier head of ``modules_to_save`` in), an adapter PEFT reloads with the same outputs, and the SoRA model
    itself unchanged, still gated and trainable."""
    build, task_type = FAMILIES[family]
    model = trained_like(sora.get_sora_model(build(), sora.SoraConfig(r_max=4, task_type=task_type)))
    with torch.no_grad():
        gates(model)[1].zero_()
    x = example_inputs(family)
    expected = model_output(model, x)
    state, ranks = {k: v.clone() for k, v in model.state_dict().items()}, sora.gate_ranks(model)
    sora.save_pruned(model, tmp_path / "kept")
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert any(p.requires_grad for p in sora.bank.gate_parameters(model))
    sora.prune(model).save_pretrained(tmp_path / "pruned")
    kept, pruned = (load_file(tmp_path / name / "adapter_model.safetensors") for name in ("kept", "pruned"))
    assert kept.keys() == pruned.keys() and all(torch.equal(kept[k], pruned[k]) for k in kept)
    assert any("classifier" in k for k in kept) == (task_type == "SEQ_CLS")
    reloaded = PeftModel.from_pretrained(build(), tmp_path / "kept").eval()
    live = {name: rank for name, rank in ranks.items() if rank}
    assert sora.gate_ranks(reloaded) == live and len(live) < len(ranks)
    torch.testing.assert_close(model_output(reloaded, x), expected, rtol=1e-5, atol=1e-5)
