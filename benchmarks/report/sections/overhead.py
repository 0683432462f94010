"""## Overhead (training-step timing): benchmarks/overhead.py's CPU run (settings, timings, ratios, operator calls).
Its ``render_generic`` also renders benchmarks/memory.py's per-epoch run (in the Memory section)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..load import RESULTS, ROOT, Results, read_json
from ..markdown import rel, table


def overhead_section() -> str:
    """The CPU runs: MiniLM's (the classifier), then the embedded decoder's where it was timed."""
    path = RESULTS / "overhead_cpu.json"
    if not path.is_file():
        return "Not measured: `python benchmarks/overhead.py --output benchmarks/results/overhead_cpu.json`."
    decoder = RESULTS / "overhead_decoder_cpu.json"
    return overhead_text(path) + (f"\n\nThe embedded decoder: {overhead_text(decoder)}" if decoder.is_file() else "")


def overhead_text(path: Path) -> str:
    """One run of benchmarks/overhead.py: its settings and command, the timings, the ratios, the operator calls."""
    d = read_json(path)
    s, m = d.get("settings", {}), d.get("machine", {})
    name = rel(path, ROOT)
    command = d.get("command") or (
        f"python benchmarks/overhead.py --rounds {s.get('rounds', 20)} --warmup {s.get('warmup', 3)} "
        f"--batch-size {s.get('batch_size', 32)} --seq-len {s.get('seq_len', 128)} --threads {m.get('threads', 2)} "
        + (f"--model {s['model']} " if s.get("model", "minilm") != "minilm" else "")
        + (f"--device {s['device']} " if s.get("device", "cpu") != "cpu" else "")
        + ("--bf16 " if s.get("bf16") else "")
        + ("--torch-compile " if s.get("torch_compile") else "")
        + (f"--model-path {s['model_path']} " if s.get("model_path") else "")
        + f"--output {name}"
    )
    device = m.get("device", "cpu")
    where = (
        f"{m.get('threads')} threads on {m.get('nproc')} cores ({m.get('cpu')})"
        if device == "cpu"
        else f"{device} (CUDA {m.get('cuda')})"
    )
    text = (
        "Training-step overhead of SoRA against PEFT LoRA, PEFT AdaLoRA and a frozen-base floor "
        f"(benchmarks/overhead.py; rendered here from `{name}`). "
        "One process, every configuration timed interleaved round by round (order rotated), "
        f"{s.get('rounds')} timed rounds after {s.get('warmup')} warm-up rounds, model {s.get('model', 'minilm')}"
        f"{', bf16 autocast' if s.get('bf16') else ''}{', torch.compile' if s.get('torch_compile') else ''}, "
        f"batch {s.get('batch_size')} x seq "
        f"{s.get('seq_len')}, rank {s.get('rank')}, AdaLoRA target r {s.get('adalora_target_r')}, "
        f"{where}, torch {m.get('torch')}, "
        f"peft {m.get('peft')}; load average {_loadavg(m.get('loadavg_start'))} at start, "
        f"{_loadavg(m.get('loadavg_end'))} at end.\n\n"
        f"```bash\n{command}\n```\n\n"
    )
    rows = []
    for key, r in d.get("results", {}).items():
        unit, suffix = (1e3, "us") if key.startswith("gate") else (1.0, "ms")
        rows.append([r.get("label", key), f"{r.get('trainable_params', 0):,}",
                     f"{unit * r['median_ms']:.1f} {suffix}", f"{unit * r.get('iqr_ms', float('nan')):.1f} {suffix}",
                     f"{unit * r['min_ms']:.1f} {suffix}" if "min_ms" in r else "—"])  # fmt: skip
    text += table(["configuration", "trainable", "median", "IQR", "min"], rows)
    ratios, paired = d.get("ratios", {}), d.get("paired_ratios", {})
    if ratios:
        lines = []
        for key, value in ratios.items():
            p = paired.get(key)
            extra = f"{p['median']:.3f} (IQR {p['iqr']:.3f})" if p else ""
            lines.append([key, f"{value:.3f}", extra])
        text += "\n\n" + table(["ratio", "of medians", "median of per-round ratios"], lines)
    if d.get("targets"):
        text += "\n\nTargets: " + ", ".join(f"`{k}`: {v}" for k, v in d["targets"].items())
    ops = d.get("op_counts")
    if ops:
        by_operator = ", ".join(f"{k.removeprefix('aten::')} {v:+d}" for k, v in ops["sora_extra_by_operator"].items())
        text += (
            "\n\nOperator calls per training step (top-level `aten::` calls of forward, backward, clipping, "
            "optimizer step and `zero_grad`, counted with `torch.profiler`; the CPU-measurable proxy of the per-step "
            f"launch overhead that bounds a GPU step at batch 32): LoRA {ops['lora']}, SoRA {ops['sora']} "
            f"({ops['sora_extra_over_lora']:+d}), AdaLoRA {ops['adalora']}. SoRA minus LoRA by operator: "
            f"{by_operator}. `tests/test_overhead_ops.py` holds SoRA to at most 30 calls more than LoRA, on models "
            "of 36 and 72 adapted modules."
        )
    return text


def _loadavg(values: Any) -> str:
    return f"{values[0]:.2f}" if values else "?"


def render_generic(d: dict[str, Any], path: Path) -> str:
    """A JSON benchmark of unknown layout: its command, its per-configuration results, the rest as key: value."""
    name = rel(path, ROOT)
    command = d.get("command") or f"python benchmarks/{d.get('benchmark', 'memory')}.py --output {name}"
    text = f"Rendered from `{name}`.\n\n```bash\n{command}\n```\n\n"
    results = d.get("results")
    if isinstance(results, dict) and all(isinstance(v, dict) for v in results.values()):
        keys = sorted({k for v in results.values() for k, x in v.items() if not isinstance(x, dict | list)})
        rows = [[name] + [_fmt_value(v.get(k)) for k in keys] for name, v in results.items()]
        text += table(["configuration", *keys], rows)
    rows = [v for v in d.get("epochs", []) if isinstance(v, dict)]
    if rows:  # a per-epoch list (benchmarks/memory.py): one line per epoch
        keys = [k for k in rows[0] if not isinstance(rows[0][k], dict | list)]
        text += table(keys, [[_fmt_value(r.get(k)) for k in keys] for r in rows]) + "\n\n"
    flat = []
    for key, value in d.items():
        if key in ("results", "command", "epochs"):
            continue
        flat.append([key, _fmt_value(value)])
    if flat:
        text += "\n\n" + table(["key", "value"], flat)
    return text


def _fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return "`" + json.dumps(value)[:400].replace("|", "/") + "`"
    return "—" if value is None else str(value)


def render(res: Results) -> str:
    return "\n".join(["\n## Overhead (training-step timing)\n", overhead_section()])
