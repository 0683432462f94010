import copy

import pytest
import torch
from conftest import bert12, example_inputs, gate_grads, gates

import sora
from sora.bank import detach_bank


def _model_with_grads(seed: int = 0):
    model = sora.get_sora_model(bert12(seed), sora.SoraConfig(r_max=4, task_type="SEQ_CLS", gate_init=1.0))
    with torch.no_grad():  # non-zero B, so the gates get a gradient
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    return model


def _backward(model):
    x = example_inputs("bert12")
    model(**x, labels=torch.tensor([0, 1, 1])).loss.backward()


def test_sgd_paper_step_is_exactly_the_proximal_formula():
    model = _model_with_grads()
    lr, xi = 0.1, 3.0
    opt = sora.SoraOptimizer(model, lr=lr, xi=xi, gate_update="sgd", threshold="paper")
    _backward(model)
    before = [(g.detach().clone(), grad.clone()) for g, grad in zip(gates(model), gate_grads(model), strict=True)]
    opt.step()
    for g, (g0, grad) in zip(gates(model), before, strict=True):
        torch.testing.assert_close(g.detach(), sora.soft_threshold(g0 - lr * grad, lr * xi))


@pytest.mark.parametrize("threshold", ["paper", "constant"])
def test_adamw_gate_step_then_threshold(threshold):
    model = _model_with_grads()
    lr, xi = 0.05, 0.5
    opt = sora.SoraOptimizer(model, lr=lr, xi=xi, weight_decay=0.1, gate_update="adamw", threshold=threshold)
    _backward(model)
    # the reference: torch's AdamW without weight decay on copies of the gates, then T_tau
    copies = [torch.nn.Parameter(g.detach().clone()) for g in gates(model)]
    for c, grad in zip(copies, gate_grads(model), strict=True):
        c.grad = grad.clone()
    torch.optim.AdamW(copies, lr=lr, weight_decay=0.0).step()
    opt.step()
    tau = xi * lr if threshold == "paper" else xi
    for g, c in zip(gates(model), copies, strict=True):
        torch.testing.assert_close(g.detach(), sora.soft_threshold(c.detach(), tau))


def test_non_gate_parameters_take_a_plain_adamw_step_with_weight_decay():
    model = _model_with_grads()
    opt = sora.SoraOptimizer(model, lr=1e-2, weight_decay=0.1, xi=0.0)
    _backward(model)
    others = [p for n, p in model.named_parameters() if p.requires_grad and "sora_gate" not in n]
    copies = [torch.nn.Parameter(p.detach().clone()) for p in others]
    for c, p in zip(copies, others, strict=True):
        c.grad = p.grad.clone()
    torch.optim.AdamW(copies, lr=1e-2, weight_decay=0.1).step()
    opt.step()
    for p, c in zip(others, copies, strict=True):
        torch.testing.assert_close(p.detach(), c.detach())


def test_threshold_follows_the_lr_schedule():
    model = _model_with_grads()
    opt = sora.SoraOptimizer(model, lr=0.1, xi=2.0, gate_lr=0.2, gate_update="sgd")
    torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)
    assert opt.param_groups[-1]["lr"] == pytest.approx(0.1)  # 0.2 * 0.5
    _backward(model)
    before = [(g.detach().clone(), grad.clone()) for g, grad in zip(gates(model), gate_grads(model), strict=True)]
    opt.step()
    for g, (g0, grad) in zip(gates(model), before, strict=True):
        torch.testing.assert_close(g.detach(), sora.soft_threshold(g0 - 0.1 * grad, 0.1 * 2.0))


def test_large_xi_kills_ranks_and_gate_ranks_counts_them():
    model = _model_with_grads()
    opt = sora.SoraOptimizer(model, lr=0.1, xi=5.0, gate_update="sgd")
    assert set(sora.gate_ranks(model).values()) == {4}
    for _ in range(3):
        opt.zero_grad()
        _backward(model)
        opt.step()
    ranks = sora.gate_ranks(model)
    assert all(r == 0 for r in ranks.values())
    assert sora.count_parameters(model)["nonzero"] == 0


def test_xi_lives_in_the_state_dict():
    model = _model_with_grads()
    opt = sora.SoraOptimizer(model, lr=1e-3, xi=1e-4)
    opt.set_xi(0.25)
    _backward(model)
    opt.step()
    state = opt.state_dict()
    assert state["param_groups"][-1]["xi"] == 0.25
    other = sora.SoraOptimizer(model, lr=1e-3, xi=1e-4)
    other.load_state_dict(state)
    assert other.xi == 0.25


def test_every_group_runs_foreach_adam_also_after_loading_an_older_state():
    model = _model_with_grads()
    opt = sora.SoraOptimizer(model, lr=1e-3)
    assert all(group["foreach"] for group in opt.param_groups)
    _backward(model)
    opt.step()
    state = opt.state_dict()
    state["param_groups"][0]["foreach"] = None  # as saved when only the gate group had foreach
    other = sora.SoraOptimizer(model, lr=1e-3)
    other.load_state_dict(state)
    assert all(group["foreach"] for group in other.param_groups)
    assert other.state_dict()["state"].keys() == state["state"].keys()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": 0.0}, "lr must be a positive number"),
        ({"lr": -1.0}, "lr must be a positive number"),
        ({"lr": 1e-3, "xi": -0.1}, "xi must be a finite number >= 0"),
        ({"lr": 1e-3, "xi": float("nan")}, "xi must be a finite number >= 0"),
        ({"lr": 1e-3, "gate_lr": 0.0}, "gate_lr must be a positive number"),
        ({"lr": 1e-3, "gate_update": "adam"}, "gate_update must be one of adamw, sgd"),
        ({"lr": 1e-3, "threshold": "soft"}, "threshold must be one of paper, constant"),
    ],
)
def test_bad_optimizer_arguments(kwargs, message):
    with pytest.raises(sora.SoraError, match=message):
        sora.SoraOptimizer(_model_with_grads(), **kwargs)


def test_set_xi_rejects_negative_and_plain_models_are_refused():
    opt = sora.SoraOptimizer(_model_with_grads(), lr=1e-3)
    with pytest.raises(sora.SoraError, match="xi must be"):
        opt.set_xi(-1)
    with pytest.raises(sora.SoraError, match="no SoRA gates"):
        sora.SoraOptimizer(bert12(), lr=1e-3)


@pytest.mark.slow  # 300 steps twice in float64: ~30 s on 2 cores
def test_hundreds_of_steps_match_the_straightforward_reference():
    """The implementation (gates folded into B for the whole model, SoraOptimizer with foreach Adam over every group
    and the threshold in place) against the straightforward one: the gate multiplied in every module's forward pass,
    torch's per-tensor AdamW for A, B and the head, per-tensor AdamW without weight decay then ``soft_threshold`` for
    the gates. 300 steps with gradient clipping give the same live ranks and the same pruned adapters.

    In float64 and at lr 1e-3: both compute the same numbers up to rounding, but training is chaotic at lr 1e-2 (a
    1e-15 change of one weight grows to 3e-2 and changes ranks within 300 steps), and in float32 Adam turns rounding
    differences of near-zero gradients into steps of size lr. test_layer compares one step in float32."""
    lr, xi, weight_decay, steps = 1e-3, 2e-3, 0.01, 300
    model = sora.get_sora_model(bert12(), sora.SoraConfig(r_max=4, task_type="SEQ_CLS")).double()
    reference = copy.deepcopy(model)
    detach_bank(reference.get_base_model())
    opt = sora.SoraOptimizer(model, lr=lr, xi=xi, weight_decay=weight_decay, threshold="constant")
    ref_gates = gates(reference)
    gate_ids = {id(g) for g in ref_gates}
    ref_others = [p for p in reference.parameters() if p.requires_grad and id(p) not in gate_ids]
    ref_opts = [
        torch.optim.AdamW(ref_others, lr=lr, weight_decay=weight_decay, foreach=False),
        torch.optim.AdamW(ref_gates, lr=lr, weight_decay=0.0, foreach=False),
    ]
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        ids = torch.randint(5, 100, (4, 10), generator=generator)
        labels = (ids[:, 0] > 50).long()
        for m, step in ((model, opt.step), (reference, lambda: [o.step() for o in ref_opts])):
            m(input_ids=ids, labels=labels).loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in m.parameters() if p.requires_grad], 1.0)
            step()
            m.zero_grad()
        with torch.no_grad():
            for g in ref_gates:
                g.copy_(sora.soft_threshold(g, xi))
    ranks = sora.gate_ranks(model)
    assert ranks == sora.gate_ranks(reference)
    assert 0.2 < sum(ranks.values()) / (4 * len(ranks)) < 0.8  # many ranks died, many live
    pruned, pruned_ref = sora.prune(model).state_dict(), sora.prune(reference).state_dict()
    assert pruned.keys() == pruned_ref.keys()
    for name, value in pruned.items():
        torch.testing.assert_close(value, pruned_ref[name], atol=1e-5, rtol=0, msg=name)


def test_a_state_saved_with_a_tensor_per_gate_loads_into_the_shared_gate_tensor_and_back():
    """Checkpoints from before the gates shared one tensor hold a gate group of one tensor per module: the model
    without its fold (every gate a parameter of its own) saves exactly that layout."""
    model = _model_with_grads()
    per_gate = copy.deepcopy(model)
    detach_bank(per_gate.get_base_model())
    optimizers = [sora.SoraOptimizer(m, lr=0.05, xi=0.2) for m in (model, per_gate)]
    for m, opt in zip((model, per_gate), optimizers, strict=True):
        for _ in range(2):
            _backward(m)
            opt.step()
            opt.zero_grad()
    assert len(optimizers[1].gate_group["params"]) == len(gates(model)) > len(optimizers[0].gate_group["params"]) == 1
    for source, target in ((1, 0), (0, 1)):
        loaded = sora.SoraOptimizer((model, per_gate)[target], lr=0.05)
        loaded.load_state_dict(optimizers[source].state_dict())
        want = optimizers[target].state_dict()
        got = loaded.state_dict()
        assert got["state"].keys() == want["state"].keys()
        for index, state in want["state"].items():
            for key, value in state.items():
                torch.testing.assert_close(got["state"][index][key], value, msg=f"{index}.{key}")
