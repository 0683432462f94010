"""benchmarks/memory.py's tensor accounting (``--compare``) on a tiny random SoRA model after one step: the parts add
up, each module's gate (a view of the trainable gate bank) is not counted twice, and AdamW's state is twice the
trainable bytes."""

from __future__ import annotations

import torch
from conftest import bert12, load_benchmark

import sora

memory = load_benchmark("memory")


def _bytes(params) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def test_tensor_bytes_split_the_model_and_count_the_optimizer_state():
    model = sora.get_sora_model(bert12(), sora.SoraConfig(r_max=4, task_type="SEQ_CLS"))
    optimizer = sora.SoraOptimizer(model, lr=1e-3, xi=1e-4)
    model(input_ids=torch.randint(0, 100, (2, 8)), labels=torch.tensor([0, 1])).loss.backward()
    gradients = memory.gradient_bytes(model)
    optimizer.step()
    optimizer.zero_grad()

    named = dict(model.named_parameters())
    trainable = [p for p in named.values() if p.requires_grad]
    gate_views = [n for n, p in named.items() if n.endswith("sora_gate") and not p.requires_grad]
    frozen = [p for n, p in named.items() if not p.requires_grad and n not in gate_views]
    adapter = [p for n, p in named.items() if p.requires_grad and ("lora_" in n or "sora_gate" in n)]
    counted = memory.tensor_bytes(model)
    local = counted["local_bytes"]

    assert gate_views and counted["views"] == len(gate_views)
    assert local["trainable"] == _bytes(trainable) == gradients
    assert local["adapter"] == _bytes(adapter) and local["head"] == _bytes(trainable) - _bytes(adapter) > 0
    assert local["frozen_base"] == local["base_full_precision"] == _bytes(frozen) and local["base_4bit"] == 0
    assert counted["whole_bytes"] == local and counted["dtensor_params"] == 0
    state = memory.optimizer_bytes(optimizer)
    assert state["exp_avg"] == state["exp_avg_sq"] == _bytes(trainable)
