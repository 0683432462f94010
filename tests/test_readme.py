"""The quickstarts run as written: README.md's, and docs/causal-lm.md's on a tiny random model (no hub here)."""

import json
import re
import shlex
from pathlib import Path

from conftest import REPO, llama, qwen2, word_tokenizer

import sora
from sora.cli import main


def test_readme_quickstart_runs(tmp_path, monkeypatch):
    text = (REPO / "README.md").read_text(encoding="utf-8")
    code = re.search(r"## Python quickstart\n\n```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert (tmp_path / "my-adapter" / "adapter_model.safetensors").is_file()
    assert not hasattr(scope["merged"], "peft_config")


def _decoder_section() -> str:
    text = (REPO / "docs" / "causal-lm.md").read_text(encoding="utf-8")
    return re.search(r"^# Decoder models: instruction tuning\n(.*)", text, re.S).group(1)


def test_readme_decoder_quickstart_runs_on_a_tiny_qwen2(tmp_path, monkeypatch):
    """docs/causal-lm.md's commands and Python, with a tiny random Qwen2 for the hub model (CI has no hub)."""
    section = _decoder_section()
    name = re.search(r'name = "(.*?)"', section).group(1)
    model_dir = tmp_path / "tiny-qwen2"
    qwen2().save_pretrained(model_dir)
    word_tokenizer().save_pretrained(model_dir)
    records = list(map(json.loads, re.search(r"```json\n(.*?)```", section, re.S).group(1).splitlines()))
    monkeypatch.chdir(tmp_path)
    for file in ("train.jsonl", "dev.jsonl"):
        Path(file).write_text("".join(json.dumps(r) + "\n" for r in records * 4), encoding="utf-8")

    commands = re.search(r"```bash\n(.*?)```", section, re.S).group(1).replace("\\\n", " ")
    for line in commands.strip().splitlines():
        args = shlex.split(line.replace(name, str(model_dir)))
        assert args[0] == "sora"
        small = ["--max-seq-length", "48", "--batch-size", "4", "--epochs", "1"] if args[1] == "train" else []
        assert main([*args[1:], *small]) == 0, line
    assert (tmp_path / "runs" / "qwen-sora" / "generations.jsonl").is_file()
    assert (tmp_path / "runs" / "qwen-sora" / "adapter-uniform-rank" / "adapter_config.json").is_file()

    code = re.search(r"```python\n(.*?)```", section, re.S).group(1).replace(name, str(model_dir))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert (tmp_path / "my-decoder-adapter" / "adapter_model.safetensors").is_file()


def test_readme_own_training_script_runs_on_a_tiny_llama(tmp_path, monkeypatch):
    """README's TRL SFTTrainer snippet as written, with a tiny random Llama for the embedded decoder: the budget
    lands and the saved adapter is a plain PEFT LoRA adapter."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    code = re.search(r"## In your own training script\n.*?```python\n(.*?)```", text, re.S).group(1)
    assert len(code.splitlines()) <= 16
    model_dir = tmp_path / "tiny-llama"
    llama(seed=1, initializer_range=0.2, num_hidden_layers=6).save_pretrained(model_dir)
    word_tokenizer().save_pretrained(model_dir)
    monkeypatch.setattr(sora, "embedded_decoder", lambda: str(model_dir))
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    target = scope["trainer"].optimizer.optimizer.gate_group["budget_target"]
    nonzero = sora.count_parameters(scope["model"])["nonzero"]
    assert 0.99 * target <= nonzero <= target
    config = json.loads((tmp_path / "my-sft-adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["rank_pattern"]
