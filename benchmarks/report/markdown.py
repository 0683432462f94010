"""What the sections share in print: the names of tasks, methods and metrics, number formats, Markdown tables and
links, and a run's training trace in words."""

from __future__ import annotations

import math
import os
import statistics
from pathlib import Path
from typing import Any

from .stats import mean_std

TASK_NAMES = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "rte": "RTE"}
METHOD_NAMES = {
    "full": "Full FT",
    "bitfit": "BitFit",
    "lora": "LoRA r=8",
    "lora-alpha8": "LoRA r=8, alpha 8",
    "adalora": "AdaLoRA r=8",
    "sora": "SoRA r_max=8",
    "sora-default": "SoRA r_max=8, defaults",
}
METRIC_NAMES = {
    "matthews_correlation": "MCC",
    "accuracy": "acc",
    "pearson": "Pearson",
    "f1": "F1",
    "spearmanr": "Spearman",
}


def fmt_ms(values: list[float]) -> str:
    if not values:
        return "—"
    mean, std = mean_std(values)
    return f"{mean:.1f}" if math.isnan(std) else f"{mean:.1f} ± {std:.1f}"


def fmt_params(n: float | None) -> str:
    if n is None:
        return "—"
    return f"{n / 1e3:,.1f}K" if n < 1e6 else f"{n / 1e6:.2f}M"


def rel(path: Path, out_dir: Path) -> str:
    """``path`` relative to ``out_dir``, the folder of the Markdown file being written (links in BENCHMARKS.md)."""
    return Path(os.path.relpath(path, out_dir)).as_posix()


def table(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    if align is None:  # numbers right, text left
        numeric = [all(str(row[i])[:1] in "0123456789-—*+." for row in rows) for i in range(len(header))]
        align = "".join("r" if n and i else "l" for i, n in enumerate(numeric))
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def trace_text(r: dict[str, Any]) -> str:
    """A run's loss and gradient-norm trace in words (from its ``loss_log`` of [step, loss, grad norm] rows)."""
    log = r["loss_log"]
    return (
        f"loss {log[0][1]:.2f} at step {log[0][0]}, up to {max(x[1] for x in log[: max(1, len(log) // 4)]):.2f} in "
        f"the first quarter, {log[-1][1]:.2f} at the end, median gradient norm in the second half "
        f"{statistics.median(g for _, _, g in log[len(log) // 2 :]):.2f}"
    )


def rank_pattern(name: str, ranks: dict[str, int]) -> str:
    """Where a run keeps its ranks: the mean live rank per module type and per third of the layers."""
    from sora.analysis import parse_module_name

    cells = [(*parse_module_name(module), rank) for module, rank in ranks.items()]
    full = list(dict.fromkeys(t for _, t, _ in cells))

    def short(mtype: str) -> str:
        """The shortest dotted suffix that no other type ends with: `key`, `intermediate.dense`."""
        parts = mtype.split(".")
        for k in range(1, len(parts)):
            suffix = ".".join(parts[-k:])
            if not any(f != mtype and (f == suffix or f.endswith("." + suffix)) for f in full):
                return suffix
        return mtype

    types = {short(mtype): statistics.fmean(v for _, t, v in cells if t == mtype) for mtype in full}
    layers = sorted({layer for layer, _, _ in cells if layer is not None})
    thirds = [layers[i * len(layers) // 3 : (i + 1) * len(layers) // 3] for i in range(3)]
    parts = {f"layers {p[0]}-{p[-1]}": statistics.fmean(v for layer, _, v in cells if layer in p) for p in thirds if p}
    most, least = max(types, key=types.get), min(types, key=types.get)
    spread = f"most in {most}, least in {least}" if types[most] > types[least] else "the same in every type"
    return (
        f"{name}: mean live rank per module type "
        + ", ".join(f"{t} {m:.1f}" for t, m in types.items())
        + f" ({spread}); per third of the depth: "
        + ", ".join(f"{k} {m:.1f}" for k, m in parts.items())
        + "."
    )
