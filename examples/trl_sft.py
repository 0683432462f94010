"""SoRA in TRL's SFTTrainer: chat records on the embedded decoder (SmolLM2-135M-Instruct), trained to half of the
r_max adapter (a sparsity budget of 0.5), saved pruned, and reloaded in plain PEFT with the same outputs.

    python examples/trl_sft.py OUTPUT_DIR [--model FOLDER] [--steps N]

``--model``: another decoder folder (the default, ``sora.embedded_decoder()``, is converted from the installed GGUF
file on its first use, about 40 s). The tests run this script on a tiny Llama.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

import sora

PAIRS = [("chair", "chaise"), ("house", "maison"), ("dog", "chien"), ("cat", "chat"), ("bread", "pain"),
         ("water", "eau"), ("book", "livre"), ("tree", "arbre")]  # fmt: skip


def chat(english: str, french: str | None = None) -> list[dict[str, str]]:
    """A chat record: the request, and the answer when given."""
    turns = [{"role": "user", "content": f"Translate to French: {english}"}]
    return turns + ([{"role": "assistant", "content": french}] if french else [])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--model", help="a decoder folder (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args(argv)
    path = args.model or sora.embedded_decoder()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = sora.get_sora_model(
        AutoModelForCausalLM.from_pretrained(path), sora.SoraConfig(r_max=8, task_type="CAUSAL_LM")
    )

    config = SFTConfig(
        output_dir=str(args.output_dir / "checkpoints"),
        max_steps=args.steps,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        logging_steps=5,
        save_strategy="no",
        report_to="none",
        bf16=False,  # SFTConfig's defaults are bf16 and activation (gradient) checkpointing, even on a CPU
        activation_checkpointing=False,
    )
    adapter = args.output_dir / "adapter"
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list([{"messages": chat(*pair)} for pair in PAIRS]),
        processing_class=tokenizer,
        optimizers=(sora.create_sora_optimizer(model, config), None),
        callbacks=[sora.SoraCallback(budget=sora.SparsityBudget(target_ratio=0.5), save_pruned_to=adapter)],
    )
    trainer.train()

    # the pruned adapter in plain PEFT: the same outputs as the trained SoRA model
    prompt = tokenizer.apply_chat_template(chat("chair"), add_generation_prompt=True, tokenize=False)
    probe = tokenizer(prompt, return_tensors="pt").to(model.device)
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path), adapter).to(model.device)
    with torch.no_grad():
        logits, again = model.eval()(**probe).logits, reloaded.eval()(**probe).logits
    counts, diff = sora.count_parameters(model), float((logits - again).abs().max())
    print(f"{counts['nonzero']:,} adapter parameters ({counts['live_ranks']} ranks) in {adapter}")
    print(f"reloaded in plain PEFT, its logits differ from the trained model's by at most {diff:.1e}")
    return {"trainer": trainer, "adapter": adapter, "probe": probe, "logits": logits}


if __name__ == "__main__":
    main()
