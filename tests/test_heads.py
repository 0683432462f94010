"""The classification recipe on every supported encoder family: the whole head trains, and it learns a small task.

Tiny random-weight BERT, RoBERTa, DeBERTa-v2 and ELECTRA models (saved with the MiniLM tokenizer, so nothing
downloads) train through ``sora train`` with its default head and learning rates; only the data, the epochs and the
batch size are set.
"""

import json
import random

import pytest
import torch
from conftest import MINILM
from peft import PeftModel
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    DebertaV2Config,
    ElectraConfig,
    RobertaConfig,
)

from sora.cli import main
from sora.tasks.classification import head_modules

SIZES = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
FAMILIES = {
    "bert": (BertConfig(**SIZES), ["classifier", "bert.pooler"]),
    "roberta": (RobertaConfig(**SIZES), ["classifier"]),
    "deberta-v2": (DebertaV2Config(**SIZES), ["pooler", "classifier"]),
    "electra": (ElectraConfig(embedding_size=32, **SIZES), ["classifier"]),
}
SLOW = pytest.mark.slow
WORDS = "the a film plot cast story music scene actor ending we saw it was and".split()


def _save_tiny(family: str, folder) -> str:
    config, _ = FAMILIES[family]
    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    config.vocab_size, config.pad_token_id = tokenizer.vocab_size, tokenizer.pad_token_id
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _write_task(folder, n: int, seed: int) -> str:
    """A separable sentiment-like task: the label is which of two cue words the sentence holds."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = rng.choices(WORDS, k=6)
        words.insert(rng.randrange(7), ("great", "awful")[label])
        rows.append(f"{' '.join(words)},{('pos', 'neg')[label]}\n")
    path = folder / f"data{seed}.csv"
    path.write_text("text,label\n" + "".join(rows))
    return str(path)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_head_modules_of_each_family(family):
    config, expected = FAMILIES[family]
    model = AutoModelForSequenceClassification.from_config(config)
    assert sorted(head_modules(model)) == sorted(expected)


# ~5 s a run on 2 cores. The quick run (-m "not slow") trains SoRA on the two head layouts: BERT's pooler inside the
# backbone, DeBERTa-v2's outside it (RoBERTa and ELECTRA keep theirs in the classifier); the other 10 runs are slow.
QUICK_HEADS = {("bert", "sora"), ("deberta-v2", "sora")}


@pytest.mark.parametrize(
    ("family", "method"),
    [
        pytest.param(family, method, id=f"{family}-{method}", marks=() if (family, method) in QUICK_HEADS else SLOW)
        for method in ("sora", "lora", "adalora")
        for family in FAMILIES
    ],
)
def test_the_default_head_learns_a_separable_task(tmp_path, family, method):
    model_dir = _save_tiny(family, tmp_path / "model")
    train_file, dev_file = _write_task(tmp_path, 128, 0), _write_task(tmp_path, 64, 1)
    out = tmp_path / "run"
    args = ["train", "--task", "custom", "--method", method, "--model", model_dir, "--output-dir", str(out)]
    args += ["--train-file", train_file, "--validation-file", dev_file, "--text-columns", "text"]
    assert main([*args, "--epochs", "20", "--batch-size", "16"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    if method != "adalora":
        # AdaLoRA starts its singular values at 0 and its factors at N(0, 0.02): on random weights its adapters move
        # too little in 160 steps for any head to separate the classes (BitFit neither); on the pretrained backbone
        # it learns (BENCHMARKS.md, "Defaults"). Here it is checked for the head alone: trained and exported.
        assert metrics["eval"]["accuracy"] >= 0.9, metrics["eval"]
    assert metrics["baseline"]["accuracy"] == 0.5
    base = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    initial = {n: p.clone() for n, p in base.named_parameters()}
    assert metrics["head_params"] == sum(initial[n].numel() for n in initial if _in_head(n, family))
    # the exported adapter carries the trained head, and plain PEFT reloads it
    merged = dict(PeftModel.from_pretrained(base, str(out / "adapter")).merge_and_unload().named_parameters())
    untrained = [n for n in initial if _in_head(n, family) and torch.equal(merged[n], initial[n])]
    assert not untrained


def _in_head(name: str, family: str) -> bool:
    return any(name.startswith(f"{head}.") for head in FAMILIES[family][1])
