"""## Table 4 analog: seconds per epoch of LoRA, AdaLoRA and SoRA in one interleaved invocation, and their ratios."""

from __future__ import annotations

import statistics

import glue

from ..load import Results, Runs
from ..markdown import METHOD_NAMES, TASK_NAMES, table

RATIOS = {
    "SoRA / AdaLoRA": ("sora", "adalora"),
    "SoRA / LoRA": ("sora", "lora"),
    "AdaLoRA / LoRA": ("adalora", "lora"),
}


def timings(speed: Runs) -> tuple[list[dict], dict[str, list[float]], dict[int, dict[str, float]]]:
    """The runs of the invocation with the most runs, their seconds per epoch by method and by round."""
    invocations: dict[str, list[str]] = {}
    for name, r in speed.items():
        invocations.setdefault(r["invocation"], []).append(name)
    names = max(invocations.values(), key=len)
    by_method: dict[str, list[float]] = {}
    rounds: dict[int, dict[str, float]] = {}
    for name in names:
        r = speed[name]
        by_method.setdefault(r["method"], []).append(r["seconds_per_epoch"])
        rounds.setdefault(int(name.rsplit("_trial", 1)[1]), {})[r["method"]] = r["seconds_per_epoch"]
    return [speed[n] for n in names], by_method, rounds


def medians(by_method: dict[str, list[float]]) -> dict[str, float]:
    return {m: statistics.median(v) for m, v in by_method.items()}


def ratios(speed: Runs) -> dict[str, float] | None:
    """The ratios of the median seconds per epoch (None when Table 4 was not measured)."""
    if not speed:
        return None
    med = medians(timings(speed)[1])
    return {label: med[a] / med[b] for label, (a, b) in RATIOS.items() if a in med and b in med}


def speed_section(speed: Runs) -> str:
    if not speed:
        return ""
    runs, by_method, rounds = timings(speed)
    med = medians(by_method)
    rows = [
        [METHOD_NAMES[m], len(by_method[m]), ", ".join(f"{x:.1f}" for x in by_method[m]), f"{med[m]:.1f}"]
        for m in glue.SPEED_METHODS if m in med
    ]  # fmt: skip
    text = table(["method", "runs", "seconds per epoch (each run)", "median"], rows)
    lines = []
    for label, (a, b) in RATIOS.items():
        if a in med and b in med:
            per_round = [rd[a] / rd[b] for rd in rounds.values() if a in rd and b in rd]
            lines.append([label, f"{med[a] / med[b]:.2f}", ", ".join(f"{x:.2f}" for x in per_round)])
    text += "\n\n" + table(["ratio", "of medians", "per round"], lines)
    first = runs[0]
    text += (
        f"\n\nOne invocation ({first['invocation']}), {len(rounds)} rounds; each round trains LoRA, AdaLoRA and "
        f"SoRA once (1 epoch of {TASK_NAMES[glue.SPEED_TASK]}, {first['train_samples']} samples, batch "
        f"{glue.COMMON['batch_size']}, seq {glue.COMMON['max_seq_length']}, 1 thread), the order rotated per round. "
        "`seconds_per_epoch` times the Trainer's training steps only (forward, backward, optimizer step, AdaLoRA's "
        "rank allocation), no evaluation or saving. The machine is shared, so single runs are noisy; the ratios are "
        "the numbers to read. Load average during the runs: "
        + ", ".join(f"{r['loadavg_start'][0]:.1f}" for r in runs)
        + "."
    )
    return text


def render(res: Results) -> str:
    return "\n".join(
        [
            "\n## Table 4 analog: training time of LoRA, AdaLoRA, SoRA\n",
            speed_section(res.speed) or "Not measured: `python benchmarks/glue.py speed`.",
        ]
    )
