"""benchmarks/overhead.py on CPU with tiny settings: the flags of its GPU mode (--model, --bf16, --device, --layers,
--model-path) run end to end and report the ratios. No timing is asserted: the numbers of one round at batch 2 mean
nothing."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import load_benchmark
from transformers import BertConfig, BertForSequenceClassification

overhead = load_benchmark("overhead")
load_benchmark("build_report")  # puts benchmarks/ on sys.path, as running the script does (report)
from report.sections import gpu  # noqa: E402

TINY = ["--rounds", "1", "--warmup", "0", "--batch-size", "2", "--seq-len", "8", "--threads", "1", "--layers", "1"]


@pytest.mark.parametrize(
    ("model", "modules"),
    [
        pytest.param("minilm", 6, marks=pytest.mark.slow),  # the quick run keeps test_model_path_loads_the_model...
        pytest.param("deberta-v3-base", 6, marks=pytest.mark.slow),  # builds the full-size model: ~10 s on 2 cores
        pytest.param("smollm2", 7, marks=pytest.mark.slow),  # ~20 s
    ],
)
def test_cpu_run_with_bf16_autocast_reports_the_ratios(model, modules, tmp_path, request):
    if model == "smollm2":
        request.getfixturevalue("embedded")  # the embedded decoder, converted once for the session into a temp cache
    report = overhead.main([*TINY, "--model", model, "--bf16", "--output", str(tmp_path / "overhead.json")])
    assert (tmp_path / "overhead.json").is_file()
    assert report["settings"] | {"model": model, "device": "cpu", "bf16": True, "layers": 1} == report["settings"]
    assert report["machine"]["device"] == "cpu"
    for ratio in ("sora_over_lora", "sora_over_adalora", "gate_step_percent_of_sora_step"):
        assert math.isfinite(report["ratios"][ratio]) and report["ratios"][ratio] > 0
    gates = report["results"]["gate_step"]["trainable_params"]
    assert gates == modules * overhead.RANK  # one layer: its adapted weights, r_max gate entries each
    ops = report["op_counts"]
    assert 0 < ops["lora"] < ops["sora"] == ops["lora"] + ops["sora_extra_over_lora"]
    assert ops["sora_extra_over_lora"] == sum(ops["sora_extra_by_operator"].values())


def test_deberta_v3_base_config_is_the_published_one():
    config = overhead.deberta_v3_base_config()
    expected = {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "vocab_size": 128100,
        "relative_attention": True,
        "position_buckets": 256,
        "norm_rel_ebd": "layer_norm",
        "share_att_key": True,
        "pos_att_type": ["p2c", "c2p"],
        "max_relative_positions": -1,
        "position_biased_input": False,
        "type_vocab_size": 0,
    }
    assert {name: getattr(config, name) for name in expected} == expected


def test_cuda_without_a_gpu_is_a_usage_error(capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(SystemExit):
        overhead.main([*TINY, "--device", "cuda"])
    assert "no CUDA device" in capsys.readouterr().err


def test_model_path_loads_the_model_from_that_folder(tmp_path):
    # a 2-layer BERT in place of MiniLM's 6 layers, as a lent GPU passes MiniLM's weights from a folder
    folder = tmp_path / "bert"
    config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)
    BertForSequenceClassification(config).save_pretrained(folder)
    no_layers = TINY[: TINY.index("--layers")]
    report = overhead.main([*no_layers, "--model", "minilm", "--model-path", str(folder)])
    assert report["settings"]["model_path"] == str(folder)
    assert report["results"]["gate_step"]["trainable_params"] == 2 * 6 * overhead.RANK


def test_model_path_with_deberta_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        overhead.main([*TINY, "--model", "deberta-v3-base", "--model-path", "somewhere"])
    assert "--model-path: deberta-v3-base is built from its configuration" in capsys.readouterr().err


def test_the_gpu_section_tabulates_cuda_runs_and_says_what_is_not_measured(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu, "RESULTS", tmp_path)
    assert "**GPU step-time ratios: not measured.**" in gpu.render(None)
    report = overhead.main([*TINY, "--output", str(tmp_path / "overhead_cuda_minilm_bf16.json")])
    report["machine"]["device"] = "NVIDIA H100"  # a CPU run standing for a CUDA one: the section reads the file
    (tmp_path / "overhead_cuda_minilm_bf16.json").write_text(json.dumps(report), encoding="utf-8")
    text = gpu.render(None)
    ratio, paired = report["ratios"]["sora_over_lora"], report["paired_ratios"]["sora_over_lora"]
    assert f"| minilm | NVIDIA H100 | {ratio:.3f} ({paired['median']:.3f}, IQR {paired['iqr']:.3f}) |" in text
    assert "**torch.compile on a GPU: not measured yet.**" in text
