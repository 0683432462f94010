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

Under bf16 autocast, and with DeBERTa, whose relative attention calls each layer's query and key projections twice per
forward: autocast caches its casts of parameters (LoRA's B), not of other tensors (SoRA's folded B'), so SoRA once cast
every B' at every call: 24 casts more than LoRA per forward of DeBERTa-v3-base (an H100 step 1.09 of LoRA's). The fold
now casts all B' once under autocast: bf16, MiniLM: LoRA 1858 calls, SoRA 1851; the 4-layer DeBERTa: 1853 and 1858
(before: 1888, 35 extra).
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from conftest import bert12, load_benchmark, minilm_classifier
from peft import LoraConfig, get_peft_model
from transformers import DebertaV2ForSequenceClassification

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


def deberta4(seed: int = 0):
    """A random 4-layer DeBERTa-v2 with DeBERTa-v3-base's relative attention (overhead.py's config), shrunk."""
    torch.manual_seed(seed)
    cfg = load_benchmark("overhead").deberta_v3_base_config(layers=4)
    sizes = {"vocab_size": 100, "hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64}
    cfg.update({**sizes, "pooler_hidden_size": 32, "position_buckets": 16})
    return DebertaV2ForSequenceClassification(cfg).eval()


def _ops(model: torch.nn.Module, optimizer: torch.optim.Optimizer, bf16: bool) -> Counter[str]:
    """Top-level ``aten::`` calls of one training step (after one uncounted step), by operator name; the forward
    pass under bf16 autocast if ``bf16``."""
    batch = _batch(model.config.vocab_size)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()

    return load_benchmark("overhead").top_level_ops(step)


@pytest.mark.parametrize(
    ("build", "model_type", "modules", "bf16"),
    [
        (minilm_classifier, "bert", 36, False),
        (bert12, "bert", 72, False),
        (minilm_classifier, "bert", 36, True),
        (deberta4, "deberta-v2", 24, True),
    ],
)
def test_sora_step_adds_a_bounded_number_of_operator_calls_over_lora(build, model_type, modules, bf16):
    targets = list(DEFAULT_TARGET_MODULES[model_type])
    lora = get_peft_model(build(), LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=targets, task_type="SEQ_CLS"))
    lora_params = [p for p in lora.parameters() if p.requires_grad]
    lora_ops = _ops(lora, torch.optim.AdamW(lora_params, lr=1e-4, foreach=True), bf16)

    model = sora.get_sora_model(build(), sora.SoraConfig(r_max=RANK, task_type="SEQ_CLS"))
    assert len(sora.gate_ranks(model)) == modules
    sora_ops = _ops(model, sora.SoraOptimizer(model, lr=1e-4), bf16)

    report = f"LoRA {lora_ops.total()} calls, SoRA {sora_ops.total()}; extra: {dict(sora_ops - lora_ops)}"
    # SoRA makes every call LoRA makes, but for casts: under autocast it casts all B' in one call
    assert set(lora_ops - sora_ops) <= ({"aten::to"} if bf16 else set()), report
    assert sora_ops.total() - lora_ops.total() <= EXTRA, report
