"""## Table 1 analog: GLUE dev, 5 methods (the table, SoRA's live ranks per run), and what learned anything: the
majority-class baselines that the claims sections also read."""

from __future__ import annotations

import statistics
from typing import Any

import glue

from ..load import Results, Runs, methods_of, score
from ..markdown import METHOD_NAMES, METRIC_NAMES, TASK_NAMES, fmt_ms, fmt_params, table


def summary(t1: Runs) -> Runs:
    """Per method of ``t1``: ``nonzero``, the mean of its runs' nonzero parameters (None when it has none)."""
    out = {}
    for m in methods_of(t1):
        values = [r["nonzero_params"] for r in t1.values() if r["method"] == m]
        out[m] = {"nonzero": statistics.fmean(values) if values else None}
    return out


def lora_share(summary: dict[str, Any], method: str) -> float | None:
    """``method``'s mean nonzero parameters over LoRA's (None until both are measured)."""
    s, lo = summary.get(method, {}).get("nonzero"), summary.get("lora", {}).get("nonzero")
    return s / lo if s and lo else None


def table1_section(t1: Runs) -> str:
    """The Table 1 layout of ``t1`` (also the longer runs' table): mean ± std per task and method, then SoRA's live
    ranks per run."""
    cells: dict[tuple[str, str], list[float]] = {}
    seeds: dict[str, set[int]] = {}
    for r in t1.values():
        cells.setdefault((r["task"], r["method"]), []).append(score(r))
        seeds.setdefault(r["method"], set()).add(r["seed"])
    metric = {r["task"]: METRIC_NAMES.get(r["primary_metric"], r["primary_metric"]) for r in t1.values()}
    header = ["method", "params (nonzero, mean)"]
    header += [f"{TASK_NAMES[t]} ({metric.get(t, '?')})" for t in glue.TASKS] + ["seeds"]
    rows, nonzero = [], summary(t1)
    for m in methods_of(t1):
        row = [METHOD_NAMES[m], fmt_params(nonzero[m]["nonzero"])]
        row += [fmt_ms(cells.get((t, m), [])) for t in glue.TASKS]
        row.append(",".join(str(s) for s in sorted(seeds.get(m, []))) or "—")
        rows.append(row)
    text = table(header, rows)
    text += (
        "\n\nCells: mean ± standard deviation over the seeds (one seed: the value alone), dev set, the final model. "
        "MRPC: accuracy. params: the parameters the exported adapter holds (LoRA factors of the live ranks; AdaLoRA: "
        "its live ranks' factors; full / BitFit: every trained weight, the classifier included). For the adapters "
        "the classification layer (770 weights, trained in every method; the pooler stays frozen) is not counted."
    )
    # per-run ranks of SoRA
    sora_runs = [r for r in t1.values() if r["method"].startswith("sora")]
    if sora_runs:
        lines = []
        for r in sorted(sora_runs, key=lambda r: (glue.TASKS.index(r["task"]), r["method"], r["seed"])):
            live = sum(r["ranks"].values())
            total = glue.RANK * len(r["ranks"])
            lines.append([TASK_NAMES[r["task"]], METHOD_NAMES[r["method"]], r["seed"], f"{live}/{total}",
                          f"{100 * live / total:.0f}%", fmt_params(r["nonzero_params"])])  # fmt: skip
        text += "\n\nSoRA's live ranks per run (LoRA r=8 keeps 288/288 = 332K):\n\n"
        text += table(["task", "SoRA", "seed", "live ranks", "kept", "nonzero params"], lines)
    return text


# What a model that learned nothing scores (the majority class; a constant prediction for STS-B).
BASELINE = {"cola": 0.0, "sst2": 50.9, "mrpc": 68.4, "stsb": 0.0, "rte": 52.7}


# points above BASELINE that count as "learned something" (STS-B: a Pearson of 20, a weak but real correlation)
LEARNED_MARGIN = {"cola": 5.0, "sst2": 3.0, "mrpc": 3.0, "stsb": 20.0, "rte": 3.0}


def learned(t1: Runs) -> dict[str, list[str]]:
    """Task -> the methods whose mean score is more than LEARNED_MARGIN above the baseline."""
    out: dict[str, list[str]] = {}
    for task in glue.TASKS:
        for m in methods_of(t1):
            values = [score(r) for r in t1.values() if r["task"] == task and r["method"] == m]
            if values and statistics.fmean(values) > BASELINE[task] + LEARNED_MARGIN[task]:
                out.setdefault(task, []).append(m)
    return out


def learned_text(t1: Runs) -> str:
    got = learned(t1)
    parts = []
    for task in glue.TASKS:
        methods = got.get(task, [])
        who = "all methods" if len(methods) == len(methods_of(t1)) else ", ".join(METHOD_NAMES[m] for m in methods)
        parts.append(f"{TASK_NAMES[task]}: {who or 'none'}")
    return "; ".join(parts)


def majority_note(t1: Runs) -> str:
    return (
        "Reference points: the majority class scores MRPC acc 68.4 (F1 81.2), RTE acc 52.7, SST-2 acc 50.9, CoLA "
        "MCC 0; a constant STS-B prediction has Pearson 0. Methods above these by more than 3 points (CoLA 5, "
        f"STS-B 20; mean over seeds), i.e. that learned something: {learned_text(t1)}. The other cells measure "
        "noise around the baseline, not the method."
    )


def render(res: Results) -> str:
    out = ["## Table 1 analog: GLUE dev, 5 methods\n", (table1_section(res.t1) if res.t1 else "Not measured.") + "\n"]
    if res.partial:
        out.append(
            f"Runs of seeds that did not finish for every task and method are kept out of the table "
            f"({len(res.partial)} files: {', '.join(res.partial)}).\n"
        )
    out.append(majority_note(res.t1) + "\n")
    return "\n".join(out)
