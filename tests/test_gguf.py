"""``sora export --gguf``: a run's adapter as a llama.cpp LoRA GGUF, read back with gguf's own reader.

Run folders are built as ``sora train --task causal-lm --model FOLDER`` leaves them (``adapter/`` with the pruned
PEFT adapter and ``sora_task.json``) from tiny random decoders whose gates are made sparse with ``trained_like``, so
modules keep different ranks. Each GGUF pair is checked against the PEFT adapter as PEFT applies it (the
``scaling`` of each loaded LoRA layer times ``B · A``), with the rotary row order of q/k rebuilt here from the
formula of llama.cpp's ``LlamaModel.permute``. Not run here: llama.cpp itself (a separate benchmark).
"""

import json
import shutil
from dataclasses import asdict

import gguf
import pytest
import torch
from conftest import _decoder, bert12, gpt2, llama, qwen2, trained_like
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from transformers import (
    AutoModelForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

import sora
from sora.cli import main
from sora.data import TASKS
from sora.gguf import export_gguf
from sora.tasks.causal_lm import CausalLMSpec


def mistral(seed: int = 0):
    return _decoder(MistralConfig, MistralForCausalLM, seed)


def qwen3(seed: int = 0):
    return _decoder(Qwen3Config, Qwen3ForCausalLM, seed, head_dim=8)


# family -> (builder, GGUF architecture, whether q/k rows are permuted)
FAMILIES = {
    "llama": (llama, "llama", True),
    "mistral": (mistral, "llama", True),
    "qwen2": (qwen2, "qwen2", False),
    "qwen3": (qwen3, "qwen3", False),
}
# llama.cpp's tensor names (llama-arch.cpp) for the modules SoRA adapts in a Llama-layout block
LLAMA_CPP_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def _run_folder(root, build, task="causal-lm", seed=0):
    """A run folder as a causal-LM (or, with a GLUE task name, classification) run leaves it."""
    base = root / "base"
    build(seed).save_pretrained(base)
    if task == "causal-lm":
        model, spec, task_type = AutoModelForCausalLM.from_pretrained(base), CausalLMSpec(), "CAUSAL_LM"
    else:
        model, spec, task_type = build(seed), TASKS[task], "SEQ_CLS"
    sparse = trained_like(sora.get_sora_model(model, sora.SoraConfig(r_max=8, task_type=task_type)), seed=seed)
    adapter = root / "run" / "adapter"
    sora.prune(sparse).save_pretrained(adapter)
    (adapter / "sora_task.json").write_text(json.dumps({"spec": asdict(spec), "max_seq_length": 32}))
    return root / "run"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return {f: _run_folder(tmp_path_factory.mktemp(f), FAMILIES[f][0]) for f in FAMILIES}


def _config(run):
    return json.loads((run / "adapter" / "adapter_config.json").read_text())


def _read(path):
    """GGUF metadata (key -> value) and tensors (name -> torch tensor in torch's dimension order)."""
    reader = gguf.GGUFReader(path)
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    tensors = {}
    for t in reader.tensors:
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        tensors[t.name] = torch.from_numpy(t.data.copy())
        assert tuple(reversed([int(d) for d in t.shape])) == tuple(tensors[t.name].shape)  # ggml ne is reversed
    return fields, tensors


def _peft_deltas(build, run):
    """Module -> (rank, PEFT's scaling · B · A), from the adapter loaded on its base by PEFT itself."""
    model = PeftModel.from_pretrained(build(), run / "adapter")
    deltas = {}
    for name, layer in model.named_modules():
        if isinstance(layer, LoraLayer) and "default" in layer.lora_A:
            a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
            deltas[name.removeprefix("base_model.model.")] = (a.shape[0], layer.scaling["default"] * (b @ a).detach())
    return deltas


def _rotary_rows(n_head: int, head_dim: int) -> list[int]:
    """The source row of each output row of llama.cpp's ``permute``: ``reshape(n_head, 2, head_dim/2, -1)``,
    ``swapaxes(1, 2)``, so output row ``h·d + 2i + j`` is input row ``h·d + j·d/2 + i``."""
    half = head_dim // 2
    return [h * head_dim + j * half + i for h in range(n_head) for i in range(half) for j in range(2)]


def _gguf_name(module: str) -> str:
    layer, rest = module.removeprefix("model.layers.").split(".", 1)
    return f"blk.{layer}.{LLAMA_CPP_NAMES[rest]}.weight"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_gguf_holds_each_module_at_its_own_rank_with_peft_scale_folded_into_b(family, runs, capsys):
    build, arch, permuted = FAMILIES[family]
    run = runs[family]
    assert main(["export", "--gguf", str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(run / "adapter.gguf")
    fields, tensors = _read(run / "adapter.gguf")
    assert fields == {
        "general.architecture": arch,
        "general.type": "adapter",
        "adapter.type": "lora",
        "adapter.lora.alpha": 0.0,
    }

    deltas = _peft_deltas(build, run)
    assert len({rank for rank, _ in deltas.values()}) > 1  # per-module ranks, pruned differently
    assert set(tensors) == {f"{_gguf_name(m)}.lora_{ab}" for m in deltas for ab in "ab"}
    cfg = build().config
    for module, (rank, delta) in deltas.items():
        a, b = tensors[f"{_gguf_name(module)}.lora_a"], tensors[f"{_gguf_name(module)}.lora_b"]
        assert a.shape == (rank, delta.shape[1]) and b.shape == (delta.shape[0], rank)  # no padding
        heads = {"q_proj": cfg.num_attention_heads, "k_proj": cfg.num_key_value_heads}.get(module.split(".")[-1])
        if permuted and heads:
            delta = delta[_rotary_rows(heads, delta.shape[0] // heads)]
        torch.testing.assert_close(b @ a, delta)


def test_q_and_k_rows_follow_llama_cpp_rotary_order_and_a_is_unchanged(runs, tmp_path):
    run = runs["llama"]
    out = export_gguf(run, tmp_path / "llama.gguf")
    _, tensors = _read(out)
    adapter = sora.model.load_safetensors(run / "adapter" / "adapter_model.safetensors")
    config, cfg = _config(run), llama().config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    for proj, heads in (("q_proj", cfg.num_attention_heads), ("k_proj", cfg.num_key_value_heads)):
        key = f"base_model.model.model.layers.0.self_attn.{proj}"
        a, b = adapter[f"{key}.lora_A.weight"], adapter[f"{key}.lora_B.weight"]
        scale = config["alpha_pattern"][f"model\\.layers\\.0\\.self_attn\\.{proj}"] / a.shape[0]
        assert scale == pytest.approx(16 / 8)
        assert torch.equal(tensors[f"blk.0.attn_{proj[0]}.weight.lora_a"], a)
        torch.testing.assert_close(
            tensors[f"blk.0.attn_{proj[0]}.weight.lora_b"], scale * b[_rotary_rows(heads, head_dim)]
        )
    _, qwen = _read(export_gguf(runs["qwen2"], tmp_path / "qwen2.gguf"))
    b = sora.model.load_safetensors(runs["qwen2"] / "adapter" / "adapter_model.safetensors")[
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
    ]
    torch.testing.assert_close(qwen["blk.0.attn_q.weight.lora_b"], 2.0 * b)  # Qwen2: no permutation


def test_rslora_scale_is_the_one_peft_applies(runs, tmp_path):
    run = shutil.copytree(runs["qwen2"], tmp_path / "run")
    config = _config(run)
    (run / "adapter" / "adapter_config.json").write_text(json.dumps({**config, "use_rslora": True}))
    _, tensors = _read(export_gguf(run))
    for module, (_, delta) in _peft_deltas(qwen2, run).items():
        name = _gguf_name(module)
        torch.testing.assert_close(tensors[f"{name}.lora_b"] @ tensors[f"{name}.lora_a"], delta)


def test_output_and_base_model_options_and_overwriting_a_gguf(runs, tmp_path, capsys):
    run = shutil.copytree(runs["llama"], tmp_path / "run")
    config = _config(run)
    base = config["base_model_name_or_path"]
    (run / "adapter" / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "/gone"}))
    out = tmp_path / "out" / "x.gguf"
    args = ["export", "--gguf", str(run / "adapter"), "--output", str(out)]
    assert main(args) == 2
    assert (
        capsys.readouterr().err
        == "sora: error: base model '/gone': no such folder (pass --model with the base model's folder)\n"
    )
    assert not out.exists()
    assert main([*args, "--model", base]) == 0
    assert main([*args, "--model", f"{base}/config.json"]) == 0  # overwrites its own GGUF
    assert capsys.readouterr().out.splitlines() == [str(out)] * 2
    assert _read(out)[0]["general.architecture"] == "llama"
    assert sorted(p.name for p in out.parent.iterdir()) == ["x.gguf"]


def _corrupt(run, what):
    adapter = run / "adapter"
    weights, config_file = adapter / "adapter_model.safetensors", adapter / "adapter_config.json"
    config = json.loads(config_file.read_text())
    if what == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:100])
    elif what == "config not JSON":
        config_file.write_text("{not json")
    elif what == "rank pattern lies":
        key = next(iter(config["rank_pattern"]))
        config["rank_pattern"][key] += 1
        config_file.write_text(json.dumps(config))
    elif what == "lora_B missing":
        tensors = sora.model.load_safetensors(weights)
        del tensors[next(k for k in tensors if "lora_B" in k)]
        from safetensors.torch import save_file

        save_file(tensors, weights)
    elif what == "another base model":  # 8 heads of 4: q's 32 rows fit, k's 16 rows are not 2 kv heads of 4
        base = run.parent / "base"
        cfg = json.loads((base / "config.json").read_text())
        (base / "config.json").write_text(json.dumps({**cfg, "num_attention_heads": 8, "head_dim": 4}))


@pytest.mark.parametrize(
    "what, expected",
    [
        ("truncated weights", "adapter_model.safetensors: not a readable safetensors file"),
        ("config not JSON", "adapter_config.json: not a readable adapter config"),
        ("rank pattern lies", "adapter_config.json gives module model.layers"),
        ("lora_B missing", "has lora_A but not its pair"),
        ("another base model", "the adapter does not fit it"),
    ],
)
def test_a_corrupt_adapter_is_one_line_and_nothing_is_written(runs, tmp_path, capsys, what, expected):
    run = shutil.copytree(runs["llama"].parent, tmp_path / "copy", ignore=shutil.ignore_patterns("*.gguf")) / "run"
    config = _config(run)
    (run / "adapter" / "adapter_config.json").write_text(
        json.dumps({**config, "base_model_name_or_path": str(run.parent / "base")})
    )
    _corrupt(run, what)
    assert main(["export", "--gguf", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sora: error: ") and expected in err and err.count("\n") == 1
    assert not list(run.glob("*.gguf*")) and not list(run.glob(".*"))


@pytest.mark.parametrize(
    "build, task, expected",
    [
        (bert12, "rte", "a run of task 'rte'; --gguf exports causal-lm (decoder) adapters"),
        (gpt2, "causal-lm", "is GPT2LMHeadModel: --gguf maps the tensor names of LLaMAForCausalLM, LlamaForCausalLM"),
    ],
)
def test_classification_runs_and_unmapped_architectures_are_refused(tmp_path, capsys, build, task, expected):
    run = _run_folder(tmp_path, build, task)
    capsys.readouterr()  # the base model's save progress bar
    assert main(["export", "--gguf", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sora: error: ") and expected in err and err.count("\n") == 1
    assert not list(run.glob("*.gguf*")) and not list(run.glob(".*"))


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--gguf", "--uniform-rank"], "argument --uniform-rank: not allowed with argument --gguf"),
        ([], "one of the arguments --uniform-rank --gguf is required"),
        (["--uniform-rank", "--model", "m"], "--model is for --gguf"),
        (["--gguf", "--output", "NOT_GGUF"], "exists and is not a GGUF file: choose another --output"),
    ],
)
def test_bad_export_requests_are_one_line(runs, tmp_path, capsys, args, expected):
    not_gguf = tmp_path / "notes.txt"
    not_gguf.write_text("keep me")
    run = runs["llama"]
    before = sorted(p.name for p in run.iterdir())
    assert main(["export", str(run), *[str(not_gguf) if a == "NOT_GGUF" else a for a in args]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sora: error: ") and expected in err and err.count("\n") == 1
    assert not_gguf.read_text() == "keep me" and sorted(p.name for p in run.iterdir()) == before
