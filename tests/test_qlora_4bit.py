"""--load-in-4bit (QLoRA: an NF4 base, bitsandbytes on the CPU): SoRA's gate on PEFT's 4-bit LoRA layers, training,
export and reloading onto the 4-bit and the full-precision base, merging, the CLI, bad input, and the quieting of
bitsandbytes' import-time warning; a short run on the embedded decoder (SmolLM2-135M-Instruct in NF4) that learns.
Skipped where bitsandbytes is not installed (CI installs it: the dev extra)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import MINILM, trained_like, word_tokenizer
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import sora
from sora import SoraError, quant
from sora.bank import gate_parameters
from sora.cli import main
from sora.data import TaskSpec
from sora.layer import GatedLinear
from sora.methods import get_method
from sora.modules import lora_modules
from sora.run_config import TrainConfig
from sora.tasks import EvalOptions, task_family
from sora.tasks.causal_lm import causal_tokenizer, load_model, masked_loss, read_examples, to_dataset
from sora.tasks.classification import load_classifier

bnb = pytest.importorskip("bitsandbytes")
from peft import PeftModel  # noqa: E402
from peft.tuners.adalora.bnb import SVDLinear4bit  # noqa: E402
from peft.tuners.lora.bnb import Linear4bit  # noqa: E402

CAUSAL = task_family("causal-lm")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """A tiny random Llama saved as a model folder. Its widths are multiples of 64, bitsandbytes' NF4 block size on
    the CPU (a 32-wide layer does not run there)."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=100,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    folder = tmp_path_factory.mktemp("llama4bit")
    LlamaForCausalLM(config).save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    return folder


def _load(folder, in_4bit: bool = True):
    return load_model(str(folder), word_tokenizer(), load_in_4bit=in_4bit)


def _batch(seed: int = 0) -> torch.Tensor:
    return torch.randint(6, 100, (4, 16), generator=torch.Generator().manual_seed(seed))


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def _build(cfg: TrainConfig, model, steps: int):
    """The model and optimizer of ``cfg``'s method, for a causal LM."""
    return get_method(cfg.method).build(
        cfg, model, task_type=CAUSAL.task_type, heads=CAUSAL.heads(model), total_steps=steps
    )


def _cfg(tmp_path, method: str, **kwargs) -> TrainConfig:
    return TrainConfig(task="causal-lm", output_dir=str(tmp_path), method=method, r=4, load_in_4bit=True, **kwargs)


@pytest.fixture(scope="module")
def trained(llama_dir, tmp_path_factory):
    """SoRA trained on a 4-bit tiny Llama for a few steps (losses per step), then pruned and saved."""
    model, optimizer = _build(_cfg(tmp_path_factory.mktemp("run"), "sora", lr=1e-2), _load(llama_dir), 12)
    ids, losses = _batch(), []
    model.train()
    for step in range(12):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        if step == 5:  # an evaluation in between, as the Trainer's: training goes on with its gradients intact
            _logits(model, ids)
            model.train()
    pruned = sora.prune(model)
    adapter = tmp_path_factory.mktemp("adapter")
    pruned.save_pretrained(adapter)
    return {"losses": losses, "pruned": pruned, "adapter": adapter, "ids": ids}


def test_4bit_sora_gates_sit_on_peft_4bit_layers(llama_dir, tmp_path):
    model, _ = _build(_cfg(tmp_path, "sora"), _load(llama_dir), 10)
    modules = lora_modules(model)
    base = model.get_base_model()
    assert len(modules) == 2 * 7 and all(isinstance(base.get_submodule(m.name), Linear4bit) for m in modules)
    assert all(isinstance(m.lora_a, GatedLinear) for m in modules)
    assert len(gate_parameters(model)) == 1  # the gate bank applies
    assert base.is_loaded_in_4bit
    assert base.lm_head.weight.dtype == torch.float32  # transformers' default skip: the LM head stays unquantized
    assert isinstance(base.model.layers[0].mlp.up_proj.base_layer.weight, bnb.nn.Params4bit)


def test_4bit_gated_forward_is_b_diag_g_a(llama_dir, tmp_path):
    """Inside a model's forward pass (the gate folded into B) and called on its own (the per-module gate), a 4-bit
    LoRA layer computes ``W_nf4·x + s·B·diag(g)·A·x``."""
    model, _ = _build(_cfg(tmp_path, "sora"), _load(llama_dir), 10)
    trained_like(model, seed=3)
    layer = model.get_base_model().model.layers[1].self_attn.v_proj
    seen = {}

    def capture(module, args, output):
        seen.update(x=args[0].detach(), out=output.detach(), folded=module.lora_A["default"].sora_folded)

    handle = layer.register_forward_hook(capture)
    _logits(model, _batch())
    handle.remove()
    a, b = layer.lora_A["default"], layer.lora_B["default"]
    x, g = seen["x"], a.sora_gate.detach()
    assert seen["folded"] and (g == 0).any() and (g != 0).any()
    with torch.no_grad():
        expected = layer.base_layer(x) + layer.scaling["default"] * F.linear(F.linear(x, a.weight) * g, b.weight)
        alone = layer(x)
    assert not a.sora_folded
    torch.testing.assert_close(seen["out"], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(alone, expected, rtol=1e-5, atol=1e-5)


def test_4bit_sora_trains_and_its_loss_falls(trained):
    losses = trained["losses"]
    assert all(map(torch.isfinite, torch.tensor(losses)))
    assert losses[-1] < losses[0] - 0.5, losses


@pytest.mark.parametrize("method", ["lora", "adalora"])
def test_4bit_lora_and_adalora_build_and_backpropagate(llama_dir, tmp_path, method):
    model, _ = _build(_cfg(tmp_path, method), _load(llama_dir), 10)
    kind = Linear4bit if method == "lora" else SVDLinear4bit
    layers = [m for m in model.modules() if isinstance(m, kind)]
    assert len(layers) == 2 * 7
    ids = _batch()
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad and "lora_A" in n]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_4bit_adapter_reloads_onto_the_4bit_and_the_full_precision_base(trained, llama_dir):
    """Onto the 4-bit base, plain PEFT gives the pruned model's outputs; onto the fp32 base, outputs move by about
    the base's own NF4 error (the adapter was trained against the dequantized NF4 weights), no more."""
    ids = trained["ids"]
    expected = _logits(trained["pruned"], ids)
    reloaded_4bit = PeftModel.from_pretrained(_load(llama_dir), str(trained["adapter"]))
    torch.testing.assert_close(_logits(reloaded_4bit, ids), expected, rtol=1e-5, atol=1e-5)

    full = AutoModelForCausalLM.from_pretrained(llama_dir)
    base_full, base_4bit = _logits(full, ids), _logits(_load(llama_dir), ids)
    base_gap = (base_full - base_4bit).abs().max()
    reloaded_full = _logits(PeftModel.from_pretrained(full, str(trained["adapter"])), ids)
    gap = (reloaded_full - expected).abs().max()
    assert 0 < gap < 4 * base_gap, (gap, base_gap)  # here 0.19 against 0.08: the adapter amplifies it a little
    # what the adapter adds to the logits is about the same on either base
    change_4bit, change_full = expected - base_4bit, reloaded_full - base_full
    assert (change_full - change_4bit).norm() < 0.25 * change_4bit.norm()  # here 12%


def test_4bit_merge_is_refused_and_a_full_precision_merge_works(trained, llama_dir):
    reloaded_4bit = PeftModel.from_pretrained(_load(llama_dir), str(trained["adapter"]))
    with pytest.raises(SoraError, match="cannot merge into a 4-bit base") as caught:
        sora.merge(reloaded_4bit)
    assert "\n" not in str(caught.value)
    ids = trained["ids"]
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama_dir), str(trained["adapter"]))
    expected = _logits(reloaded, ids)
    merged = sora.merge(reloaded)
    assert not isinstance(merged, PeftModel)
    torch.testing.assert_close(_logits(merged, ids), expected, rtol=1e-4, atol=1e-4)


def test_4bit_minilm_keeps_its_head_in_full_precision(tokenizer):
    """The head (classifier and BERT's pooler, by their full names) stays out of the quantization, so it trains."""
    spec = TaskSpec(name="sst2", text_columns=("sentence",), label_column="label", label_names=("0", "1"))
    model = load_classifier(MINILM, spec, tokenizer, load_in_4bit=True)
    assert isinstance(model.bert.encoder.layer[0].attention.self.query, bnb.nn.Linear4bit)
    for head in (model.classifier, model.bert.pooler.dense):
        assert type(head) is torch.nn.Linear and head.weight.dtype == torch.float32
    assert not any(p.requires_grad for p in model.parameters())  # prepare_model_for_kbit_training froze the base
    ids = tokenizer(["a gripping film"], return_tensors="pt")
    assert torch.isfinite(_logits(model, ids["input_ids"])).all()


def test_4bit_sora_train_cli_on_minilm_end_to_end(tmp_path, glue_dir, capsys):
    out = tmp_path / "q4"
    args = ["train", "--task", "sst2", "--method", "sora", "--load-in-4bit", "--data-dir", str(glue_dir)]
    tiny = ["--max-train-samples", "16", "--max-eval-samples", "16", "--max-seq-length", "32", "--batch-size", "8"]
    assert main([*args, "--output-dir", str(out), *tiny, "--epochs", "1", "--r", "4"]) == 0
    err = capsys.readouterr().err
    assert err.count("sora: note: 4-bit") <= 1 and "kernels-community" not in err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["hyperparameters"]["load_in_4bit"] is True
    assert json.loads((out / "adapter" / "sora_task.json").read_text())["load_in_4bit"] is True
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert {"bert.pooler", "classifier"} <= set(config["modules_to_save"])  # the head, trained in full precision
    eval_args = ["eval", "--adapter", str(out / "adapter"), "--data-dir", str(glue_dir)]
    assert main(eval_args) == 0
    assert json.loads(capsys.readouterr().out) == metrics["eval"]  # the 4-bit base again, as the run scored
    assert main([*eval_args, "--no-load-in-4bit"]) == 0
    assert 0 <= json.loads(capsys.readouterr().out)["accuracy"] <= 1


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--method", "full"], "--load-in-4bit freezes the base in 4 bits and trains an adapter: --method full"),
        (["--method", "bitfit"], "--load-in-4bit freezes the base in 4 bits and trains an adapter: --method bitfit"),
        (["--fsdp"], "--load-in-4bit does not shard: drop --fsdp"),
    ],
)
def test_4bit_impossible_requests_are_one_line_and_write_nothing(tmp_path, capsys, extra, expected):
    out = tmp_path / "never"
    assert main(["train", "--task", "sst2", "--load-in-4bit", "--output-dir", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sora: error: {expected}") and err.count("\n") == 1
    assert not out.exists()


def test_4bit_without_bitsandbytes_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # what find_spec sees where it is not installed
    assert not quant.bitsandbytes_available()
    out = tmp_path / "never"
    assert main(["train", "--task", "sst2", "--load-in-4bit", "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    needs = "--load-in-4bit needs bitsandbytes: pip install 'sora-lora[qlora]' (bitsandbytes>=0.45)"
    assert err == f"sora: error: {needs}\n"
    assert not out.exists()
    options = EvalOptions()
    with pytest.raises(SoraError, match=r"a 4-bit base needs bitsandbytes.*--no-load-in-4bit"):
        options.base_in_4bit({"load_in_4bit": True})
    assert options.base_in_4bit({}) is False
    assert EvalOptions(load_in_4bit=False).base_in_4bit({"load_in_4bit": True}) is False


@pytest.mark.parametrize(
    "name, message",
    [
        ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward: No module named 'kernels'"),
        (
            "kernels._internals.hf_hub",  # kernels installed, the hub offline
            "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes' because Hugging Face "
            "Hub is in offline mode.",
        ),
    ],
)
def test_4bit_kernels_warnings_are_held_back_and_remembered(monkeypatch, name, message):
    monkeypatch.setattr(quant._KernelsWarning, "seen", False)
    logger = logging.getLogger(name)
    record = logger.makeRecord(logger.name, logging.WARNING, __file__, 1, message, (), None)
    other = logger.makeRecord(logger.name, logging.WARNING, __file__, 1, "something else", (), None)
    assert logger.filter(other) and not quant._KernelsWarning.seen
    assert not logger.filter(record) and quant._KernelsWarning.seen


@pytest.mark.slow  # a fresh interpreter importing peft and bitsandbytes: ~10 s on 2 cores
def test_4bit_a_plain_sora_command_prints_nothing_of_bitsandbytes():
    """``import sora``, then peft (which imports bitsandbytes when installed), then `sora train --help`: no word of
    bitsandbytes' `kernels` (missing, or installed with the hub offline, as the tests run)."""
    code = (
        "import sora, peft, bitsandbytes, runpy, sys; sys.argv = ['sora', 'train', '--help']; "
        "runpy.run_module('sora', run_name='__main__')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and "--load-in-4bit" in result.stdout
    assert "kernels" not in result.stderr + result.stdout, result.stderr


# the embedded decoder in 4 bits: a short run learns

SENTIMENT = [  # one-word answers; the system turn keeps SmolLM2's template from adding its long default one
    ("I loved this film.", "positive"),
    ("What a waste of time.", "negative"),
    ("A joy from start to end.", "positive"),
    ("The plot was dull and slow.", "negative"),
    ("Great acting and a fine story.", "positive"),
    ("I hated every minute.", "negative"),
    ("A warm and funny movie.", "positive"),
    ("Boring, long and badly made.", "negative"),
]
SENTIMENT_DEV = [
    ("A wonderful, moving film.", "positive"),
    ("Terrible jokes and a weak plot.", "negative"),
    ("I enjoyed it a lot.", "positive"),
    ("An awful mess.", "negative"),
]


def _sentiment_file(path, rows):
    records = [
        {
            "messages": [
                {"role": "system", "content": "Answer with one word."},
                {"role": "user", "content": f"Positive or negative? {sentence}"},
                {"role": "assistant", "content": answer},
            ]
        }
        for sentence, answer in rows
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.mark.slow
def test_4bit_sora_on_the_embedded_decoder_learns(embedded, tmp_path):
    """`sora train --task causal-lm --method sora --load-in-4bit` with no --model: 4 steps on 8 chat records. The
    validation loss (answer and end-of-turn tokens) of the exported adapter on the NF4 base falls well below the
    untuned NF4 base's on the same records, scored the same way (``masked_loss``); the adapter also loads with plain
    PEFT onto the full-precision decoder. ~20 s on a shared 2-core machine, once the decoder is converted."""
    folder, _ = embedded
    train = _sentiment_file(tmp_path / "train.jsonl", SENTIMENT)
    dev = _sentiment_file(tmp_path / "dev.jsonl", SENTIMENT_DEV)
    out = tmp_path / "run"
    args = ["train", "--task", "causal-lm", "--method", "sora", "--load-in-4bit", "--train-file", str(train),
            "--validation-file", str(dev), "--output-dir", str(out), "--r", "4", "--batch-size", "4", "--epochs", "2",
            "--max-seq-length", "64"]  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # faster on a shared 2-core machine than 2 contended threads
    try:
        assert main(args) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["model"] == str(folder) and metrics["hyperparameters"]["load_in_4bit"] is True
        tuned = metrics["eval"]["loss"]  # the exported adapter, loaded onto a fresh NF4 base

        tokenizer = causal_tokenizer(str(folder))
        records = to_dataset(read_examples(dev, tokenizer, 64))
        base_4bit = load_model(str(folder), tokenizer, load_in_4bit=True)  # as the run loads it
        base = masked_loss(base_4bit, tokenizer, records, 4)["loss"]
        assert tuned < 0.5 * base, (tuned, base)  # here 0.33 against 3.52

        full = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder), str(out / "adapter"))
        tuned_full = masked_loss(full, tokenizer, records, 4)["loss"]
        with full.disable_adapter():
            base_full = masked_loss(full, tokenizer, records, 4)["loss"]
        assert tuned_full < 0.5 * base_full, (tuned_full, base_full)  # here 0.53 against 2.63
    finally:
        torch.set_num_threads(threads)
