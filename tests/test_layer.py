"""The SoRA layer (sora.layer): the soft threshold, eq. 3's branch, the gate's initialisation."""

import pytest
import torch
from conftest import bert12, gates

import sora
from sora.layer import GatedLinear


def test_soft_threshold_is_the_proximal_operator_of_l1():
    x = torch.tensor([-3.0, -0.5, 0.0, 0.2, 0.5, 2.0])
    assert torch.equal(sora.soft_threshold(x, 0.5), torch.tensor([-2.5, 0.0, 0.0, 0.0, 0.0, 1.5]))
    assert torch.equal(sora.soft_threshold(x, 0.0), x)
    # prox of tau*|.|: argmin_z 0.5*(z-x)^2 + tau*|z|, checked on a fine grid
    grid = torch.linspace(-4, 4, 80001)
    for v in x.tolist():
        z = grid[torch.argmin(0.5 * (grid - v) ** 2 + 0.5 * grid.abs())]
        assert sora.soft_threshold(torch.tensor(v), 0.5).item() == pytest.approx(z.item(), abs=1e-3)


def test_sora_branch_is_s_times_B_diag_g_A_x():
    model = sora.get_sora_model(bert12(), sora.SoraConfig(r_max=4, lora_alpha=8, task_type="SEQ_CLS"))
    layer = model.base_model.model.bert.encoder.layer[3].attention.self.query
    a, b = layer.lora_A["default"], layer.lora_B["default"]
    assert isinstance(a, GatedLinear) and a.sora_gate.shape == (4,)
    with torch.no_grad():
        b.weight.normal_()
        a.sora_gate.copy_(torch.tensor([1.5, 0.0, -2.0, 0.3]))
    x = torch.randn(5, 32)
    expected = layer.base_layer(x) + (8 / 4) * x @ a.weight.T @ torch.diag(a.sora_gate) @ b.weight.T
    torch.testing.assert_close(layer(x), expected)


def test_gates_start_at_gate_init_and_randn_follows_the_authors():
    ones = sora.get_sora_model(bert12(), sora.SoraConfig(r_max=4, gate_init=1.0))
    assert all(torch.equal(g, torch.ones(4)) for g in gates(ones))
    torch.manual_seed(0)
    randn = sora.get_sora_model(bert12(), sora.SoraConfig(r_max=4))  # the default
    values = torch.cat([g.detach() for g in gates(randn)])
    assert values.std() > 0.5 and not torch.equal(values, torch.ones_like(values))
