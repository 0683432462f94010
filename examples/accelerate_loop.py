"""SoRA in an accelerate training loop: a decoder (the embedded SmolLM2-135M-Instruct) tuned on a few lines of text
to a fixed size (a sparsity budget of 0.5, attached by hand), the pruned adapter saved with ``sora.save_pruned`` and
reloaded in plain PEFT with the same outputs. ``accelerate launch`` runs it on several processes unchanged.

    python examples/accelerate_loop.py OUTPUT_DIR [--model FOLDER] [--steps N]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, get_linear_schedule_with_warmup

import sora

LINES = ["The cat sat on the mat.", "A dog barked at the moon.", "Rain fell on the quiet town.",
         "She read the old letter twice.", "The train left before dawn.", "Bread is best when warm."]  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--model", help="a decoder folder (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args(argv)
    path = args.model or sora.embedded_decoder()
    accelerator = Accelerator()
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = sora.get_sora_model(
        AutoModelForCausalLM.from_pretrained(path), sora.SoraConfig(r_max=8, task_type="CAUSAL_LM")
    )
    optimizer = sora.SoraOptimizer(model, lr=1e-3)
    sora.SparsityBudget(target_ratio=0.5).attach(model, optimizer, args.steps)  # before the first step
    scheduler = get_linear_schedule_with_warmup(optimizer, args.steps // 10, args.steps)
    batch = tokenizer(LINES, padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    model.train()
    for _ in range(args.steps):
        loss = model(**batch.to(accelerator.device), labels=labels.to(accelerator.device)).loss
        accelerator.backward(loss)
        optimizer.step()
        scheduler.step()
        sora.budget_step(optimizer, model)  # after the LR scheduler's step, before zero_grad
        optimizer.zero_grad()

    model = accelerator.unwrap_model(model).eval()
    adapter = args.output_dir / "adapter"
    if accelerator.is_main_process:
        sora.save_pruned(model, adapter)  # the pruned adapter; the model itself stays as it is
    accelerator.wait_for_everyone()

    # the pruned adapter in plain PEFT: the same outputs as the trained SoRA model
    probe = tokenizer(["The cat sat"], return_tensors="pt").to(accelerator.device)
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path), adapter).to(accelerator.device)
    with torch.no_grad():
        logits, again = model(**probe).logits, reloaded.eval()(**probe).logits
    counts, diff = sora.count_parameters(model), float((logits - again).abs().max())
    accelerator.print(f"{counts['nonzero']:,} adapter parameters ({counts['live_ranks']} ranks) in {adapter}")
    accelerator.print(f"reloaded in plain PEFT, its logits differ from the trained model's by at most {diff:.1e}")
    return {"model": model, "optimizer": optimizer, "adapter": adapter, "probe": probe, "logits": logits}


if __name__ == "__main__":
    main()
