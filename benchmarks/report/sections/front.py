"""## The front: one `sora schedule --target-list` run against the LoRA rank sweep it replaces, with AdaLoRA, EVA and
SoRA single budgets at the same sizes (`python benchmarks/glue.py front`)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import glue

from ..load import FIGURES, Results, Runs, load, score
from ..markdown import METRIC_NAMES, TASK_NAMES, fmt_params, rel, table
from ..stats import gap_text, gap_word

SCHEDULE = "sora-schedule"  # the front's schedule runs: glue.run_name(task, SCHEDULE, RANK, seed)
# Each line of the front: (name, [(method label, rank), ...] from the largest size to the smallest). The sweep's r=8 is
# the Defaults run, r=6 and r=4 the Equal-budget runs (the same recipe), the rest the front's own runs.
SWEEPS = (
    ("LoRA", [("lora", r) for r in (8, 6, 4, 2, 1)]),
    ("AdaLoRA", [("adalora", r) for r in (8, 6, 4, 2, 1)]),
    ("EVA", [("eva", r) for r in (8, 4, 2, 1)]),
    (
        "SoRA single budget",
        [
            ("sora-default", glue.RANK),  # no budget: the sora train default
            ("sora-budget70-const-contribution", glue.RANK),
            ("sora-budget50-const-contribution", glue.RANK),
            *((label, r) for label, r, settings in glue.FRONT_GROUPS[-1] if "target_ratio" in settings),
        ],
    ),
)
LORA_SWEEP = (8, 4, 2, 1)  # the four runs one schedule replaces


def _stage_rank(ratio: float) -> int:
    """The LoRA rank of the size a schedule stage targets (a share of the r_max=8 adapter)."""
    return round(ratio * glue.RANK)


def _schedules(front: Runs) -> Runs:
    return {name: r for name, r in front.items() if "stages" in r}


def _point(runs: list[dict[str, Any]]) -> tuple[float, float, float, int] | None:
    """(mean parameters, mean score, score std, seeds) of a point's runs."""
    if not runs:
        return None
    scores = [score(r) for r in runs]
    spread = statistics.stdev(scores) if len(scores) > 1 else float("nan")
    return statistics.fmean(r["nonzero_params"] for r in runs), statistics.fmean(scores), spread, len(runs)


def _stage_score(schedule: dict[str, Any], stage: int) -> float:
    return 100 * schedule["stages"][stage]["dev"][schedule["primary_metric"]]


def _lines(
    task: str, runs: Runs, schedules: Runs, seeds: list[int]
) -> dict[str, list[tuple[float, float, float, int]]]:
    """Every line of ``task``'s front: its points as (parameters, score, std, seeds), largest first."""
    lines = {}
    for name, points in SWEEPS:
        got = [_point([x for s in seeds if (x := runs.get(glue.run_name(task, m, r, s)))]) for m, r in points]
        if any(got):
            lines[name] = [p for p in got if p]
    mine = [schedules[n] for s in seeds if (n := glue.run_name(task, SCHEDULE, glue.RANK, s)) in schedules]
    if mine:
        stages = min(len(x["stages"]) for x in mine)
        lines["SoRA schedule (one run)"] = [
            (
                statistics.fmean(x["stages"][k]["nonzero_params"] for x in mine),
                statistics.fmean(_stage_score(x, k) for x in mine),
                statistics.stdev([_stage_score(x, k) for x in mine]) if len(mine) > 1 else float("nan"),
                len(mine),
            )
            for k in range(stages)
        ]
    return lines


def _plot(task: str, lines: dict[str, list[tuple[float, float, float, int]]], metric: str, path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    for name, points in lines.items():
        xs, ys, errs = [p[0] for p in points], [p[1] for p in points], [0 if math.isnan(p[2]) else p[2] for p in points]
        style = {"linewidth": 2.5, "marker": "s", "color": "black"} if "schedule" in name else {"marker": "o"}
        ax.errorbar(xs, ys, yerr=errs, label=name, capsize=3, **style)
    ax.set_xscale("log")
    ax.set_xlabel("adapter parameters (non-zero, exported)")
    ax.set_ylabel(f"dev {METRIC_NAMES.get(metric, metric)}")
    ax.set_title(f"{TASK_NAMES[task]}: size-accuracy front (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _seconds(result: dict[str, Any]) -> float:
    """A run's time in training steps alone: seconds per epoch (step time) x epochs."""
    return result["seconds_per_epoch"] * result["hyperparameters"]["epochs"]


def front_section(runs: Runs, schedules: Runs, out_dir: Path, figures: Path = FIGURES) -> tuple[str, list[str]]:
    """The tables and plots (into ``figures``) per task, and the verdict lines."""
    blocks, verdicts = [], []
    for task in glue.FRONT_TASKS:
        mine = {int(n.rsplit("seed", 1)[1]): s for n, s in schedules.items() if s["task"] == task}
        seeds = sorted({r["seed"] for r in runs.values() if r["task"] == task} | set(mine))
        lines = _lines(task, runs, schedules, seeds)
        if "SoRA schedule (one run)" not in lines:
            continue
        first = next(iter(mine.values()))
        metric = first["primary_metric"]
        png = _plot(task, lines, metric, figures / f"front_{task}.png")
        rows, reach = [], []
        for k, ratio in enumerate(glue.FRONT_TARGETS):
            rank = _stage_rank(ratio)
            pairs = [
                (s, x)
                for seed, s in mine.items()
                if len(s["stages"]) > k and (x := runs.get(glue.run_name(task, "lora", rank, seed)))
            ]
            stage = [s for s in mine.values() if len(s["stages"]) > k]
            if not stage:
                continue
            gaps = [_stage_score(s, k) - score(x) for s, x in pairs]
            lora = [x for _, x in pairs]
            rows.append(
                [
                    f"{100 * ratio:g}% (LoRA r={rank})",
                    fmt_params(statistics.fmean(s["stages"][k]["nonzero_params"] for s in stage)),
                    ", ".join(f"{_stage_score(s, k):.1f}" for s in stage),
                    ", ".join(f"{score(x):.1f}" for x in lora) or "—",
                    gap_text(gaps) if gaps else "—",
                ]
            )
            if gaps:
                reach.append((f"{100 * ratio:g}%", gap_word(gaps), statistics.fmean(gaps), len(gaps)))
        time_ratios, epochs = [], set()
        for seed, s in mine.items():
            sweep = [runs.get(glue.run_name(task, "lora", r, seed)) for r in LORA_SWEEP]
            if len(s["stages"]) == len(glue.FRONT_TARGETS) and all(sweep):
                time_ratios.append(sum(row["seconds"] for row in s["stages"]) / sum(map(_seconds, sweep)))
                mine_epochs = len(s["stages"]) * s["epochs_per_stage"]
                epochs.add((mine_epochs, sum(x["hyperparameters"]["epochs"] for x in sweep)))
        block = (
            f"**{TASK_NAMES[task]}** (seeds {', '.join(map(str, sorted(mine)))}; `{first['command']}`)"
            "\n\n"
            + table(["size", "schedule parameters", "schedule dev", "LoRA sweep dev", "schedule − LoRA"], rows)
            + f"\n\n![{TASK_NAMES[task]} front]({rel(png, out_dir)})"
        )
        if time_ratios:
            block += (
                "\n\nTraining cost of the schedule against the four LoRA runs (r = 1, 2, 4, 8) it replaces: "
                + ", ".join(f"{a:g} epochs against {b:g} ({a / b:.2f} of the optimizer steps)" for a, b in epochs)
                + f"; measured step time {', '.join(f'{t:.2f}' for t in time_ratios)} (per seed; shared machine, the "
                "runs measured at different times and loads)."
            )
        blocks.append(block)
        words = "; ".join(
            f"{size}: {word} ({gap:+.1f}, {n} seed{'s' if n > 1 else ''})" for size, word, gap, n in reach
        )
        verdicts.append(f"- {TASK_NAMES[task]}: {words or 'no paired LoRA run yet'}.")
    return "\n\n".join(blocks), verdicts


def render(res: Results) -> str:
    front = load("front")
    schedules = _schedules(front)
    plain = {n: r for n, r in front.items() if n not in schedules}
    out = ["\n## The front: one schedule run against the LoRA rank sweep\n"]
    if not schedules:
        out.append("Not measured: `python benchmarks/glue.py front --data-dir DIR`.")
        return "\n".join(out)
    blocks, verdicts = front_section({**res.defaults, **load("equal"), **plain}, schedules, res.out_dir)
    targets = ",".join(f"{t:g}" for t in glue.FRONT_TARGETS)
    out += [
        f"One `sora schedule --target-list {targets}` run per seed (the Defaults recipe: the whole train split, "
        f"SST-2 a 20k subset; {glue.FRONT_SCHEDULE['epochs_per_stage']:g} epoch per stage at a constant learning rate "
        "after warmup; gates start at 1.0 and the budget tops up by contribution, as `sora train --target-ratio`) "
        "scores a pruned adapter at every stage: the size-accuracy curve that a LoRA rank sweep (r = 1, 2, 4, 8: "
        "four `sora train` runs of 3 epochs) gives. Each stage lands on a sweep size (75, 50, 25, 12.5% of the "
        "r_max=8 adapter = LoRA r 6, 4, 2, 1). The other lines: AdaLoRA (`target_r`), EVA (PEFT's data-driven "
        "allocation, `--method eva --r R`) and SoRA trained once per size (`--target-ratio`), all at the "
        "`sora train` defaults. Gaps are paired by seed, with their 95% interval.\n",
        blocks,
        "\n**Verdict, per size (the schedule's stage against LoRA of that size):**\n",
        "\n".join(verdicts),
        "\nA size is reached where the gap is within noise or ahead. With one seed there is no noise estimate: the "
        "verdict waits for seeds 1 and 2 (`python benchmarks/glue.py front`, resumable).",
    ]
    return "\n".join(out)
