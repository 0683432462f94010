"""GGUF base models: the embedded SmolLM2-135M-Instruct as causal-lm's default model and any local ``.gguf`` file as
``--model``, each converted once into a cached safetensors folder; bad GGUF files are one line, nothing written.

The cache is a temp folder (``$SORA_CACHE``: conftest's ``cache`` fixture) shared by the whole session, so the real
file converts once (~40 s on a 2-core machine; conftest's ``embedded`` fixture, which tests/test_qlora_4bit.py uses
too); the other GGUF files are tiny random Llamas written here with the ``gguf`` package.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from pathlib import Path

import gguf
import numpy as np
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from sora.cli import main
from sora.tasks import gguf_cache

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _byte_level_alphabet() -> list[str]:
    """GPT-2's 256 byte-level characters: a BPE vocabulary without merges that encodes any text."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(rest))]


def tiny_llama_gguf(path: Path, architecture: str = "llama", seed: int = 0) -> Path:
    """A random 2-layer Llama (width 32) as a float32 GGUF file, with a byte-level tokenizer and a ChatML template."""
    rng = np.random.default_rng(seed)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens = specials + _byte_level_alphabet()
    hidden, ffn, heads, kv_heads = 32, 64, 4, 2
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_block_count(2)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL] * len(specials) + [gguf.TokenType.NORMAL] * (len(tokens) - 3))
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_merges([])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML)

    def tensor(name: str, *shape: int) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.2).astype(np.float32))

    tensor("token_embd.weight", len(tokens), hidden)
    kv = kv_heads * hidden // heads
    for i in range(2):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        for name, shape in [("attn_q", (hidden, hidden)), ("attn_k", (kv, hidden)), ("attn_v", (kv, hidden))]:
            tensor(f"blk.{i}.{name}.weight", *shape)
        tensor(f"blk.{i}.attn_output.weight", hidden, hidden)
        tensor(f"blk.{i}.ffn_gate.weight", ffn, hidden)
        tensor(f"blk.{i}.ffn_up.weight", ffn, hidden)
        tensor(f"blk.{i}.ffn_down.weight", hidden, ffn)
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    tensor("output.weight", len(tokens), hidden)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _data_files(folder: Path) -> tuple[Path, Path]:
    """A handful of short records (a system message keeps SmolLM2's template from adding its long default one)."""
    rows = [
        {"prompt": "Translate to French: cat", "completion": "chat"},
        {"prompt": "Translate to French: dog", "completion": "chien"},
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Say hello."},
                {"role": "assistant", "content": "Hello!"},
            ]
        },
        {"text": "Plain text: every token is trained."},
    ]
    train, dev = folder / "train.jsonl", folder / "dev.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    dev.write_text("".join(json.dumps(r) + "\n" for r in rows[:3]), encoding="utf-8")
    return train, dev


def _train_args(folder: Path, out: Path, *extra: str, max_seq_length: int = 48) -> list[str]:
    """``sora train --task causal-lm`` on the records of :func:`_data_files`, one step (the tiny GGUF Llamas' byte
    tokenizer makes a token of every character: give them ``max_seq_length`` 128)."""
    train, dev = _data_files(folder)
    options = ["--max-seq-length", str(max_seq_length), "--batch-size", "4", "--epochs", "1", "--r", "4"]
    base = ["train", "--task", "causal-lm", "--train-file", str(train), "--validation-file", str(dev)]
    return [*base, "--output-dir", str(out), *options, *extra]


def _base_of(adapter: Path) -> str:
    return json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]


def _cache_entries(cache: Path) -> set[str]:
    return {p.name for p in (cache / "gguf").iterdir()} if (cache / "gguf").is_dir() else set()


# ---------------------------------------------------------------------------------------------------------------
# the embedded decoder


@pytest.mark.slow
def test_the_embedded_decoder_converts_once_into_a_loadable_folder(embedded, cache, capsys):
    folder, printed = embedded
    assert folder.parent == cache / "gguf" and folder.name.startswith("SmolLM2-135M-Instruct.Q4_1-")
    line = f"sora: converted SmolLM2-135M-Instruct.Q4_1.gguf (dequantized) to {folder}; later runs reuse it\n"
    assert printed == line
    assert not [p for p in (cache / "gguf").iterdir() if p.name.endswith(".tmp")]
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config

    assert gguf_cache.default_model() == str(folder)  # reused: nothing converted, nothing printed
    assert capsys.readouterr().err == ""

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(output[0, inputs["input_ids"].shape[1] :])  # the real weights, dequantized


@pytest.mark.slow
def test_causal_lm_trains_sora_on_the_embedded_decoder_without_model(embedded, tmp_path, capsys):
    folder, _ = embedded
    out = tmp_path / "run"
    capsys.readouterr()
    small = ["--batch-size", "2", "--max-train-samples", "2", "--max-eval-samples", "2"]  # ~5 s a step on 2 cores
    assert main(_train_args(tmp_path, out, *small)) == 0
    assert "sora: converted" not in capsys.readouterr().err
    assert json.loads((out / "run_config.json").read_text())["model"] == str(folder)
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert _base_of(out / "adapter") == str(folder)
    trained = json.loads((out / "metrics.json").read_text())["eval"]

    scores = tmp_path / "scores.json"
    args = ["eval", "--adapter", str(out / "adapter"), "--validation-file", str(tmp_path / "dev.jsonl")]
    assert main([*args, "--output", str(scores)]) == 0  # the base is found from the adapter alone
    assert json.loads(scores.read_text())["loss"] == pytest.approx(trained["loss"], rel=1e-4)


def test_a_missing_embedded_folder_is_converted_again(cache, tmp_path, monkeypatch):
    """An adapter names the embedded decoder's cached folder; after the cache is cleared that name converts anew."""
    source = tiny_llama_gguf(tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf")
    monkeypatch.setattr(gguf_cache, "embedded_gguf", lambda: source)
    folder = gguf_cache.target_folder(source)
    assert not folder.exists()
    assert gguf_cache.resolve(str(folder)) == str(folder) and (folder / "config.json").is_file()
    other = cache / "gguf" / "SmolLM2-135M-Instruct.Q4_1-000000000000"
    assert gguf_cache.resolve(str(other)) == str(other)  # not the installed file's folder: left to the loader


# ---------------------------------------------------------------------------------------------------------------
# a .gguf file as --model


def test_a_gguf_model_is_converted_once_trained_and_named_as_the_base(cache, tmp_path, capsys):
    source = tiny_llama_gguf(tmp_path / "tiny.gguf")
    folder = gguf_cache.target_folder(source)
    assert main(_train_args(tmp_path, tmp_path / "a", "--model", str(source), max_seq_length=128)) == 0
    err = capsys.readouterr().err
    assert f"sora: converted tiny.gguf (dequantized) to {folder}; later runs reuse it\n" in err
    assert _base_of(tmp_path / "a" / "adapter") == str(folder)
    assert json.loads((tmp_path / "a" / "run_config.json").read_text())["model"] == str(source)

    lora = _train_args(tmp_path, tmp_path / "b", "--model", str(source), "--method", "lora", max_seq_length=128)
    assert main(lora) == 0
    assert "sora: converted" not in capsys.readouterr().err

    os.utime(source, ns=(0, 0))  # a changed file (its modification time) converts anew, to another folder
    assert gguf_cache.target_folder(source) != folder
    assert gguf_cache.resolve(str(source)) == str(gguf_cache.target_folder(source))
    assert "sora: converted tiny.gguf" in capsys.readouterr().err


def test_a_process_that_finds_a_conversion_in_progress_waits_and_reuses_it(cache, tmp_path, capsys):
    source = tiny_llama_gguf(tmp_path / "waiting.gguf")
    folder = gguf_cache.target_folder(source)
    folder.parent.mkdir(parents=True, exist_ok=True)
    result: list[Path] = []
    with open(folder.parent / f"{folder.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process is converting
        waiter = threading.Thread(target=lambda: result.append(gguf_cache.converted(source)))
        waiter.start()
        waiter.join(timeout=2)
        assert waiter.is_alive() and not result  # it waits
        folder.mkdir()  # the other process's rename
        fcntl.flock(lock, fcntl.LOCK_UN)
    waiter.join(timeout=30)
    assert result == [folder] and list(folder.iterdir()) == []  # reused, not converted again
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------------------------------------------------------
# bad GGUF files


def _random_bytes(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return path


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda p: tiny_llama_gguf(p, architecture="mamba9"), "GGUF model with architecture mamba9 is not supported"),
        (_random_bytes, "not a GGUF file (it does not start with the bytes GGUF)"),
        (lambda p: p.write_bytes(b"GGUF" + bytes(12)) and p, "not a GGUF model transformers reads: "),
        (lambda p: p, "no such GGUF file"),
    ],
    ids=["unknown-architecture", "random-bytes", "truncated", "missing"],
)
def test_a_bad_gguf_model_is_one_line_and_nothing_is_written(cache, tmp_path, capsys, make, expected):
    source = make(tmp_path / "bad.gguf")
    before = _cache_entries(cache)
    out = tmp_path / "run"
    assert main(_train_args(tmp_path, out, "--model", str(source))) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sora: error: {source.resolve()}: ") and expected in err and err.count("\n") == 1
    assert not out.exists() and _cache_entries(cache) == before
