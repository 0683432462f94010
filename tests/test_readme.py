"""The README's Python quickstart runs as written."""

import re

from conftest import REPO


def test_readme_quickstart_runs(tmp_path, monkeypatch):
    text = (REPO / "README.md").read_text(encoding="utf-8")
    code = re.search(r"## Python quickstart\n\n```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert (tmp_path / "my-adapter" / "adapter_model.safetensors").is_file()
    assert not hasattr(scope["merged"], "peft_config")
