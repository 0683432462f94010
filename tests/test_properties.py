"""Property-based tests (hypothesis) of the soft threshold and of pruning.

The data readers' properties are in tests/test_data.py.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from peft.tuners.lora import LoraLayer
from transformers import BertConfig, BertForSequenceClassification

from sora import SoraConfig, SoraError, count_parameters, gate_ranks, get_sora_model, prune
from sora.layer import soft_threshold
from sora.modules import lora_modules

FLOAT32 = st.floats(
    min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False, allow_subnormal=False, width=32
)
# tau as a float32 value: torch thresholds a float32 tensor in float32, so "zero iff |x| <= tau" is exact
TAU = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False, allow_subnormal=False, width=32)
VECTORS = st.lists(FLOAT32, min_size=1, max_size=64).map(lambda v: torch.tensor(v, dtype=torch.float32))
FAST = settings(max_examples=200, deadline=None)


@FAST
@given(VECTORS, TAU)
def test_soft_threshold_shrinks_towards_zero_and_keeps_the_sign(x, tau):
    t = soft_threshold(x, tau)
    assert t.dtype == x.dtype and t.shape == x.shape
    assert (t.abs() <= x.abs()).all()
    assert ((t == 0) | (torch.sign(t) == torch.sign(x))).all()
    assert torch.equal(t == 0, x.abs() <= tau)  # zero exactly where |x| <= tau
    live = t != 0
    assert torch.equal(t[live], x[live] - tau * torch.sign(x[live]))  # elsewhere x moved by exactly tau


@FAST
@given(VECTORS)
def test_soft_threshold_with_tau_zero_is_the_identity(x):
    assert torch.equal(soft_threshold(x, 0.0), x)


@FAST
@given(VECTORS, TAU)
def test_soft_threshold_is_monotone_non_decreasing_in_x(x, tau):
    ordered = torch.sort(x).values
    t = soft_threshold(ordered, tau)
    assert (t[1:] >= t[:-1]).all()


@FAST
@given(VECTORS, TAU, TAU)
def test_a_larger_tau_gives_elementwise_smaller_magnitudes(x, tau_a, tau_b):
    small, large = sorted((tau_a, tau_b))
    assert (soft_threshold(x, large).abs() <= soft_threshold(x, small).abs()).all()


# ---------------------------------------------------------------------------------------------------------------
# prune


def _bert2() -> BertForSequenceClassification:
    """A randomly initialised 2-layer BERT: 12 LoRA modules, fast enough for many examples."""
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    return BertForSequenceClassification(cfg).eval()


INPUTS = {"input_ids": torch.randint(5, 100, (3, 12), generator=torch.Generator().manual_seed(1))}
INPUTS["attention_mask"] = torch.ones_like(INPUTS["input_ids"])


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(**INPUTS).logits


@st.composite
def gated_models(draw):
    """A SoRA BERT with random A, B, head and gates; per module the gates are all zero, all live, or a random mix
    (whole modules die, like in training at a large xi)."""
    r_max = draw(st.integers(1, 6))
    alpha = draw(st.sampled_from([1.0, 4.0, 8.0, 16.0, 32.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    model = get_sora_model(_bert2(), SoraConfig(r_max=r_max, lora_alpha=alpha, task_type="SEQ_CLS"))
    gen = torch.Generator().manual_seed(seed)
    n_modules = len(lora_modules(model))
    kinds = draw(st.lists(st.sampled_from(["dead", "live", "mixed"]), min_size=n_modules, max_size=n_modules))
    with torch.no_grad():
        for module, kind in zip(lora_modules(model), kinds, strict=True):
            # PEFT starts B at zero: give B (and A) trained-like sizes so that the branch changes the outputs
            module.lora_a.weight.normal_(std=0.2, generator=gen)
            module.lora_b.weight.normal_(std=0.2, generator=gen)
            gate = module.gate
            gate.copy_(torch.randn(gate.shape, generator=gen))
            if kind == "dead":
                gate.zero_()
            elif kind == "mixed":
                gate.mul_(torch.rand(gate.shape, generator=gen) < 0.5)
        for name, param in model.named_parameters():
            if "modules_to_save" in name:  # the trained copy of the head: pruning must keep it, not the original
                param.add_(torch.randn(param.shape, generator=gen))
    return model


@settings(max_examples=25, deadline=None)
@given(gated_models())
def test_prune_keeps_outputs_ranks_and_nonzero_parameters(model):
    live = {n: int(r) for n, r in gate_ranks(model).items()}
    before_logits = _logits(model)
    before_nonzero = count_parameters(model)["nonzero"]
    if not any(live.values()):
        with pytest.raises(SoraError, match="every gate is zero"):
            prune(model)
        return

    pruned = prune(model)

    torch.testing.assert_close(_logits(pruned), before_logits, rtol=0, atol=1e-5)
    assert gate_ranks(pruned) == {n: r for n, r in live.items() if r > 0}
    assert count_parameters(pruned)["nonzero"] == before_nonzero
    inner = pruned.get_base_model()
    for name, rank in live.items():
        module = inner.get_submodule(name)
        assert isinstance(module, LoraLayer) == (rank > 0), f"{name}: rank {rank}"
        if rank:
            assert module.lora_A[pruned.active_adapter].weight.shape[0] == rank
