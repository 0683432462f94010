"""The gate bank (sora.bank): all gates in one tensor, folded into B for a forward pass; the same function and
gradients as the per-module gate."""

import copy

import pytest
import torch
from conftest import bert12, example_inputs, gates, model_output, named_grads

import sora
from sora.bank import detach_bank, gate_parameters
from sora.modules import lora_modules


def _gated_model():
    """A SoRA model as after some training: B non-zero, gates random with a few entries at zero."""
    model = sora.get_sora_model(bert12(), sora.SoraConfig(r_max=4, task_type="SEQ_CLS"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
        for gate in gates(model)[::3]:
            gate[1] = 0.0
    return model


def _fold_seen(model) -> list[bool]:
    """Records, at every call of the first lora_B, whether the gate was folded into it."""
    seen = []
    lora_b = model.base_model.model.bert.encoder.layer[0].attention.self.query.lora_B["default"]
    lora_b.register_forward_pre_hook(lambda module, args: seen.append(module.sora_weight is not None))
    return seen


def _loss_and_grads(model, seed: int = 0):
    torch.manual_seed(seed)  # the same dropout masks
    loss = model(**example_inputs("bert12"), labels=torch.tensor([0, 1, 1])).loss
    loss.backward()
    return loss.detach(), named_grads(model)


def _assert_same(result, expected):
    torch.testing.assert_close(result[0], expected[0], rtol=1e-5, atol=1e-6)
    assert result[1].keys() == expected[1].keys()
    for name, grad in result[1].items():
        torch.testing.assert_close(grad, expected[1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_folded_gates_give_the_outputs_and_gradients_of_the_per_module_gate():
    model = _gated_model().train()
    reference = copy.deepcopy(model)
    detach_bank(reference.get_base_model())
    seen, seen_ref = _fold_seen(model), _fold_seen(reference)
    _assert_same(_loss_and_grads(model), _loss_and_grads(reference))
    assert seen == [True] and seen_ref == [False]
    # the fold lasts one forward pass: afterwards every layer is back to its own gate
    for module in lora_modules(model):
        assert not module.lora_a.sora_folded and module.lora_b.sora_weight is None


def test_a_forward_pass_that_raises_leaves_no_fold_behind():
    model = _gated_model()
    with pytest.raises(IndexError):
        model(input_ids=torch.tensor([[10**6]]))
    for module in lora_modules(model):
        assert not module.lora_a.sora_folded and module.lora_b.sora_weight is None


def test_activation_checkpointing_runs_the_per_module_gate():
    model = _gated_model().train()
    expected = _loss_and_grads(copy.deepcopy(model))
    model.get_base_model().activation_checkpointing_enable()
    seen = _fold_seen(model)
    _assert_same(_loss_and_grads(model), expected)
    assert seen and not any(seen)


def test_a_deep_copy_folds_its_own_gates():
    model = _gated_model()
    clone = copy.deepcopy(model)
    inputs = example_inputs("bert12")
    before = model_output(model, inputs)
    with torch.no_grad():
        for gate in gates(clone):
            gate.zero_()
    seen = _fold_seen(clone)
    with clone.disable_adapter():
        plain = model_output(clone, inputs)
    torch.testing.assert_close(model_output(clone, inputs), plain)  # zero gates: the base model's outputs
    torch.testing.assert_close(model_output(model, inputs), before)
    assert seen == [True]


def test_every_gate_is_a_view_of_the_one_tensor_that_trains_them():
    model = _gated_model()
    (bank,) = gate_parameters(model)
    named = dict(model.named_parameters())
    for module in lora_modules(model):
        assert named[f"base_model.model.{module.name}.lora_A.default.sora_gate"] is module.gate
        assert not module.gate.requires_grad
    torch.testing.assert_close(bank.detach(), torch.stack(gates(model)))
    with torch.no_grad():
        bank[0, 2] = 7.0  # what trains the bank shows in the module's sora_gate, and back
        gates(model)[1][3] = -5.0
    assert gates(model)[0][2] == 7.0 and bank[1, 3] == -5.0
    assert not any("sora_gates" in key for key in model.state_dict())  # the views carry the values


@pytest.mark.parametrize("change", ["double", "assign", "load_state_dict"])
def test_a_gate_given_storage_of_its_own_is_tied_back_at_the_next_forward_pass(change):
    model = _gated_model()
    (bank,) = gate_parameters(model)
    if change == "double":
        model.double()  # converts the bank and every view apart
    elif change == "assign":
        gates(model)[0].data = torch.full((4,), 3.0)
    else:
        state = model.state_dict()
        state[next(k for k in state if k.endswith(".sora_gate"))] = torch.full((4,), 3.0)
        model.load_state_dict(state)
    reference = copy.deepcopy(model)
    detach_bank(reference.get_base_model())  # every gate a parameter of its own, multiplied in its module
    inputs = example_inputs("bert12")
    torch.testing.assert_close(model_output(model, inputs), model_output(reference, inputs))
    assert gate_parameters(model)[0] is bank  # still the tensor an optimizer holds
    expected = torch.stack(gates(reference)).detach()
    torch.testing.assert_close(bank.detach(), expected)
    with torch.no_grad():
        bank.add_(1.0)  # a step of the bank shows in every module's gate
    torch.testing.assert_close(torch.stack(gates(model)).detach(), expected + 1.0)
