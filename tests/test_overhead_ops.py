"""Operator calls per training step, SoRA against PEFT LoRA: a CPU proxy of the GPU step time.

On a GPU at batch 32 the step is bound by kernel launches, so its time follows the number of operator calls that do
work. We count the top-level ``aten::`` calls (those not made inside another ``aten::`` call) of one training step, as
the Trainer runs it: forward with the loss, backward, ``clip_grad_norm_``, ``optimizer.step()``, ``zero_grad()``. Same
model (the embedded MiniLM, 36 adapted modules; a random 12-layer BERT, 72), same batch (2 x 16); SoRA with
SoraOptimizer, LoRA with ``torch.optim.AdamW(foreach=True)``. The step before the counted one creates the optimizers'
state.

Measured (torch 2.13 CPU): MiniLM: LoRA 1668 calls, SoRA 1695: 27 extra; the 12-layer BERT: 3294 and 3321, the same 27.
They are the fold (index_select, cat, mul, split forward; their backward) and the gates' own Adam group and soft
threshold, each one call for all modules. Before, SoRA took 2553 (885 extra: per-tensor Adam and a gate multiply in
every module), then 1907 (239 extra: the fold, but a gate parameter per module, which costs a gradient accumulation,
a clipping entry and two Adam reads each, and a slice of the fold's gradient per module).
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from conftest import bert12, load_benchmark, minilm_classifier
from peft import LoraConfig, get_peft_model

import sora
from sora.config import DEFAULT_TARGET_MODULES

RANK = 8
EXTRA = 30  # at most this many calls beyond LoRA's, whatever the number of modules


def _batch(vocab: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "input_ids": torch.randint(5, vocab, (2, 16), generator=generator),
        "attention_mask": torch.ones(2, 16, dtype=torch.long),
        "labels": torch.tensor([0, 1]),
    }


def _ops(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Counter[str]:
    """Top-level ``aten::`` calls of one training step (after one uncounted step), by operator name."""
    batch = _batch(model.config.vocab_size)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()

    def step() -> None:
        model(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()

    return load_benchmark("overhead").top_level_ops(step)


@pytest.mark.parametrize(("build", "modules"), [(minilm_classifier, 36), (bert12, 72)])
def test_sora_step_adds_a_bounded_number_of_operator_calls_over_lora(build, modules):
    lora_config = LoraConfig(
        r=RANK, lora_alpha=2 * RANK, target_modules=list(DEFAULT_TARGET_MODULES["bert"]), task_type="SEQ_CLS"
    )
    lora = get_peft_model(build(), lora_config)
    lora_params = [p for p in lora.parameters() if p.requires_grad]
    lora_ops = _ops(lora, torch.optim.AdamW(lora_params, lr=1e-4, foreach=True))

    model = sora.get_sora_model(build(), sora.SoraConfig(r_max=RANK, task_type="SEQ_CLS"))
    assert len(sora.gate_ranks(model)) == modules
    sora_ops = _ops(model, sora.SoraOptimizer(model, lr=1e-4))

    report = f"LoRA {lora_ops.total()} calls, SoRA {sora_ops.total()}; extra: {dict(sora_ops - lora_ops)}"
    assert not lora_ops - sora_ops, report  # SoRA makes every call LoRA makes
    assert sora_ops.total() - lora_ops.total() <= EXTRA, report
