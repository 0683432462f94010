"""benchmarks/memory.py's tensor accounting (``--compare``) on a tiny random SoRA model after one step: the parts add
up, each module's gate (a view of the trainable gate bank) is not counted twice, the frozen embeddings are listed
(a tied LM head named), and AdamW's state is twice the trainable bytes. Without a run: ``--task causal-lm``'s command
line (the decoder benchmark's record files), and the 4-bit section's paragraph computed from a decoder-shaped
result."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import bert12, llama, load_benchmark

import sora

load_benchmark("build_report")  # puts benchmarks/ on sys.path, as running the script does (decoder.py, report)
memory = load_benchmark("memory")

from report.sections import memory as section  # noqa: E402

MIB = 1024 * 1024


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
    embeddings = model.get_base_model().bert.embeddings
    assert counted["embeddings"] == [
        {"name": f"bert.embeddings.{name}", "shape": list(module.weight.shape), "bytes": _bytes([module.weight]),
         "tied_to": []}
        for name, module in embeddings.named_children() if isinstance(module, torch.nn.Embedding)
    ]  # fmt: skip


def test_a_tied_lm_head_is_named_with_its_embedding():
    base = llama()
    base.lm_head.weight = base.model.embed_tokens.weight
    model = sora.get_sora_model(base, sora.SoraConfig(r_max=4, task_type="CAUSAL_LM"))
    (embedding,) = memory.embeddings(model)
    assert embedding == {
        "name": "model.embed_tokens",
        "shape": [100, 32],
        "bytes": 100 * 32 * 4,
        "tied_to": ["lm_head"],
    }


# --- the command lines and the 4-bit section's paragraph, without a run -----------------------------------------


def test_causal_lm_passes_the_record_files_and_no_data_dir(monkeypatch):
    """``--task causal-lm``: the decoder benchmark's record files, its seq len (192) by default, no --model (the
    embedded decoder); a GLUE task: --data-dir and seq 64."""
    monkeypatch.setattr(memory, "compare", lambda args, argv: args)
    args = memory.main(["--compare", "4bit", "--task", "causal-lm", "--threads", "1"])
    assert (args.seq_len, args.threads) == (192, 1)
    argv = memory.sora_arguments(args, 8, 32, 32, Path("/records"))
    assert argv[:7] == ["train", "--task", "causal-lm", "--train-file", "/records/train.jsonl", "--validation-file",
                        "/records/validation.jsonl"]  # fmt: skip
    assert "--data-dir" not in argv and "--model" not in argv
    assert argv[argv.index("--max-seq-length") + 1] == "192"
    shown = {"/records": "RECORDS"}
    entry = memory.config_result([*argv, "--output-dir", "/x/run"], [], 1, 1.0, [], "/cache/gguf/SmolLM2-k", shown)
    assert entry["sora_command"].startswith("sora train --task causal-lm --train-file RECORDS/train.jsonl")
    assert entry["sora_command"].endswith("--output-dir RUN_DIR") and entry["model_folder"] == "SmolLM2-k"
    glue = memory.main(["--compare", "4bit", "--data-dir", "/glue"])
    assert glue.seq_len == 64 and memory.sora_arguments(glue, 8, 32, 32)[3:5] == ["--data-dir", "/glue"]
    with pytest.raises(SystemExit):
        memory.main(["--compare", "fsdp", "--task", "causal-lm"])


def _process(frozen: float, nf4: float, loaded: float, training: float, adapter: float) -> dict:
    """One process's summary (benchmarks/memory.py's ``_summary``), MiB."""
    rss = {"rss_after_imports_mib": 600.0, "peak_rss_loaded_mib": loaded, "peak_rss_training_mib": training}
    base = {"frozen_base_mib": frozen, "base_4bit_mib": nf4, "base_full_precision_mib": frozen - nf4}
    trainable = {"adapter_mib": adapter, "head_mib": 0.0, "gradients_mib": adapter, "optimizer_state_mib": 2 * adapter}
    return {"rank": 0, **rss, "peak_rss_end_mib": training + 50, **base, "base_4bit_as_fp32_mib": 8 * nf4, **trainable}


def _config(process: dict, adapter_bytes: int, embeddings: list) -> dict:
    raw = {"after_training_steps": {"local_bytes": {"adapter": adapter_bytes}, "embeddings": embeddings}}
    return {"sora_command": "sora train ...", "processes": [process], "raw": [raw]}


def test_the_4bit_paragraph_is_computed_from_the_decoder_numbers(tmp_path):
    """A decoder-shaped result (tied embeddings of 100 MiB, a 4-bit process that peaks lower): the paragraph names
    the embedding and its tie from the results, and says nothing of MiniLM."""
    tied = [{"name": "model.embed_tokens", "shape": [51200, 512], "bytes": 100 * MIB, "tied_to": ["lm_head"]}]
    results = {
        "lora-fp32": _config(_process(500.0, 0.0, 1400, 3000, 4.0), 4 * MIB, []),
        "sora-fp32": _config(_process(500.0, 0.0, 1400, 3000, 4.0), 4 * MIB + 6720, []),
        "sora-4bit": _config(_process(150.0, 50.0, 1100, 2800, 4.0), 4 * MIB + 6720, tied),
    }
    settings = {"task": "causal-lm", "model": "embedded SmolLM2-135M-Instruct", "steps": 4,
                "batch_size_per_process": 8, "max_seq_length": 192, "eval_samples": 32, "omp_num_threads": 1,
                "records": {"tokens_per_record": {"train": {"min": 8, "median": 83.5, "max": 136}}}}  # fmt: skip
    path = section.ROOT / "benchmarks" / "results" / "fake.json"
    d = {"command": "python benchmarks/memory.py", "settings": settings, "results": results}
    text = section.quant_text(d, path)
    assert "MiniLM" not in text and "the embedded SmolLM2-135M-Instruct" in text and "8-136 tokens" in text
    assert "from 500.0 to 150.0 MiB (-70%)" in text and "stays in fp32, 100.0 MiB, 20% of the fp32 base" in text
    assert "`model.embed_tokens` 51,200 x 512, tied to `lm_head`" in text and "100.0 MiB of it" in text
    assert "(the adapter 4.00 MiB alone: the LM head stays frozen)" in text and "its gates (6,720 bytes)" in text
    assert "peaks 300 MiB lower once loaded and 200 MiB lower after the steps" in text
    assert "falls by 57% of the resident saving" in text  # 200 of the 350 MiB
