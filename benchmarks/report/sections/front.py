"""## The front: one `sora schedule --target-list` run against the LoRA rank sweep it replaces, with AdaLoRA, EVA and
SoRA single budgets at the same sizes (`python benchmarks/glue.py front`)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import glue

from ..load import FIGURES, ROOT, Results, Runs, score
from ..markdown import METRIC_NAMES, TASK_NAMES, fmt_ms, fmt_params, rel, table
from ..stats import gap_text, gap_word, half_width

SCHEDULE = glue.FRONT_SCHEDULE["label"]  # the front's schedule runs: glue.run_name(task, SCHEDULE, RANK, seed)
# SoRA's single-budget runs by budget: the Equal-budget run at 50%, the front's own below it.
BUDGET_AT = {
    0.5: "sora-budget50-const-contribution",
    **{s["target_ratio"]: label for group in glue.FRONT_GROUPS for label, _, s in group if "target_ratio" in s},
}
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
            *((label, glue.RANK) for label in BUDGET_AT.values()),
        ],
    ),
)
LORA_SWEEP = (8, 4, 2, 1)  # the four runs one schedule replaces
# The other methods at a schedule stage's size, each against LoRA of that size: (name, method label at a size ratio;
# None where the method has no run of that size: EVA runs the sweep's ranks, SoRA single budgets those of BUDGET_AT).
RIVALS = (
    ("AdaLoRA", lambda ratio: ("adalora", glue.front_stage_rank(ratio))),
    ("EVA", lambda ratio: ("eva", r) if (r := glue.front_stage_rank(ratio)) in LORA_SWEEP else None),
    ("SoRA single budget", lambda ratio: (BUDGET_AT[ratio], glue.RANK) if ratio in BUDGET_AT else None),
)

# The runs whose per-module ranks the pattern runs take (glue.FRONT_PATTERNS' sources), as the table names them.
SOURCE_NAMES = {"sora-budget50-const-contribution": "SoRA's learned 50% run", "eva": "EVA r=4"}
COLUMNS = ["size", "schedule parameters", "schedule dev", "LoRA sweep dev", "schedule − LoRA",
           *(f"{name} − LoRA" for name, _ in RIVALS)]  # fmt: skip


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


def _pick(labels: list[str], metric: str, rows: list[dict[str, Any]]) -> tuple[str, float]:
    """The label and dev score of the size a user picks from a curve (``sora.schedule.pick_stage``'s rule) whose
    points are ``rows`` ({"nonzero_params", "dev"}, e.g. a schedule's stages)."""
    from sora.schedule import pick_stage

    k = rows.index(pick_stage({"primary_metric": metric, "stages": rows}))
    return labels[k], 100 * rows[k]["dev"][metric]


@dataclass
class _TaskFront:
    """One task's front, paired by seed: per schedule stage the stage's and LoRA's runs of that size and their gaps,
    the training cost against the sweep, and the size each curve picks."""

    task: str
    schedules: dict[int, dict[str, Any]]  # seed -> the schedule run
    rows: list[list[str]] = field(default_factory=list)  # the table
    reach: list[tuple[str, list[float]]] = field(default_factory=list)  # (size, per-seed stage - LoRA gaps)
    rivals: dict[str, list[tuple[str, list[float]]]] = field(default_factory=dict)  # RIVALS' (size, gaps to LoRA)
    epochs: set[tuple[float, float]] = field(default_factory=set)  # (the schedule's epochs, the sweep's)
    time_ratios: list[float] = field(default_factory=list)  # per seed: the schedule's seconds / the sweep's
    picks: list[tuple[int, tuple[str, float], tuple[str, float]]] = field(default_factory=list)  # seed, mine, sweep's


def _size(ratio: float) -> str:
    return f"{100 * ratio:g}%"


def _task_front(task: str, runs: Runs, schedules: Runs) -> _TaskFront:
    mine = {int(n.rsplit("seed", 1)[1]): s for n, s in schedules.items() if s["task"] == task}
    front = _TaskFront(task, mine)
    for k, ratio in enumerate(glue.FRONT_TARGETS):
        rank = glue.front_stage_rank(ratio)
        stage = {seed: s for seed, s in mine.items() if len(s["stages"]) > k}
        if not stage:
            continue
        lora = {seed: x for seed in stage if (x := runs.get(glue.run_name(task, "lora", rank, seed)))}
        gaps = [_stage_score(stage[seed], k) - score(x) for seed, x in lora.items()]
        row = [
            f"{_size(ratio)} (LoRA r={rank})",
            fmt_params(statistics.fmean(s["stages"][k]["nonzero_params"] for s in stage.values())),
            ", ".join(f"{_stage_score(s, k):.1f}" for s in stage.values()),
            ", ".join(f"{score(x):.1f}" for x in lora.values()) or "—",
            gap_text(gaps) if gaps else "—",
        ]
        if gaps:
            front.reach.append((_size(ratio), gaps))
        for name, at in RIVALS:
            method = at(ratio)
            rival = [
                score(x) - score(base)
                for seed in glue.SEEDS
                if method
                and (x := runs.get(glue.run_name(task, *method, seed)))
                and (base := runs.get(glue.run_name(task, "lora", rank, seed)))
            ]
            row.append(gap_text(rival) if rival else "—")
            if rival:
                front.rivals.setdefault(name, []).append((_size(ratio), rival))
        front.rows.append(row)
    for seed, s in mine.items():
        sweep = [runs.get(glue.run_name(task, "lora", r, seed)) for r in LORA_SWEEP]
        if len(s["stages"]) == len(glue.FRONT_TARGETS) and all(sweep):
            front.time_ratios.append(sum(row["seconds"] for row in s["stages"]) / sum(map(_seconds, sweep)))
            sweep_epochs = sum(x["hyperparameters"]["epochs"] for x in sweep)
            front.epochs.add((len(s["stages"]) * s["epochs_per_stage"], sweep_epochs))
            metric = s["primary_metric"]
            lora = [{"nonzero_params": x["nonzero_params"], "dev": x["eval"]} for x in sweep]
            front.picks.append((
                seed,
                _pick([_size(t) for t in glue.FRONT_TARGETS], metric, s["stages"]),
                _pick([f"r={r}" for r in LORA_SWEEP], metric, lora),
            ))  # fmt: skip
    return front


def _cost_text(front: _TaskFront) -> str:
    return (
        ", ".join(f"{a:g} epochs against {b:g} ({a / b:.2f} of the optimizer steps)" for a, b in sorted(front.epochs))
        + f"; measured time {', '.join(f'{t:.2f}' for t in front.time_ratios)}"
    )


def _picks_text(front: _TaskFront) -> str:
    return "; ".join(
        f"seed {seed}: the schedule {a} ({sa:.1f}), the sweep {b} ({sb:.1f})" for seed, (a, sa), (b, sb) in front.picks
    )


def _reach_text(front: _TaskFront) -> str:
    """The verdict per size in one phrase: the sizes grouped by their word (ahead / within noise / behind LoRA of
    that size, or one paired seed so far), each with its mean gap and the 95% half-width."""
    if not front.reach:
        return "no paired LoRA run yet"
    groups: dict[str, list[str]] = {"ahead": [], "within noise": [], "behind": [], "one seed only": []}
    for size, gaps in front.reach:
        word, mean = gap_word(gaps), statistics.fmean(gaps)
        groups[word].append(f"{size} {mean:+.1f}" + ("" if len(gaps) < 2 else f" ± {half_width(gaps):.1f}"))
    names = {"one seed only": "one seed so far"}
    return "; ".join(f"{names.get(word, word)} at {', '.join(sizes)}" for word, sizes in groups.items() if sizes)


def _fronts(runs: Runs, schedules: Runs) -> list[_TaskFront]:
    return [f for task in glue.FRONT_TASKS if (f := _task_front(task, runs, schedules)).schedules]


def front_section(runs: Runs, schedules: Runs, out_dir: Path, figures: Path = FIGURES) -> tuple[str, list[str]]:
    """The tables and plots (into ``figures``) per task, and the verdict lines."""
    from sora.schedule import PICK_WITHIN

    blocks, verdicts, fronts = [], [], _fronts(runs, schedules)
    for front in fronts:
        task, first = front.task, next(iter(front.schedules.values()))
        seeds = sorted({r["seed"] for r in runs.values() if r["task"] == task} | set(front.schedules))
        png = _plot(task, _lines(task, runs, schedules, seeds), first["primary_metric"], figures / f"front_{task}.png")
        block = (
            f"**{TASK_NAMES[task]}** (seeds {', '.join(map(str, sorted(front.schedules)))}; `{first['command']}`)"
            "\n\n" + table(COLUMNS, front.rows) + f"\n\n![{TASK_NAMES[task]} front]({rel(png, out_dir)})"
        )
        if front.time_ratios:
            block += (
                "\n\nTraining cost of the schedule against the four LoRA runs (r = 1, 2, 4, 8) it replaces: "
                + _cost_text(front)
                + " (per seed; shared machine, the runs measured at different times and loads). The size each curve "
                f"picks (its smallest within {PICK_WITHIN:g} point of its best dev score, as `sora schedule` "
                f"names it): {_picks_text(front)}."
            )
        blocks.append(block)
        verdicts.append(f"- {TASK_NAMES[task]}: {_reach_text(front)}.")
    mean_gaps = _mean_gaps([f.reach for f in fronts])
    if mean_gaps:
        verdicts.append(f"- The mean gap over the tasks (each task's mean over its seeds): {mean_gaps}.")
    for name, _ in RIVALS:
        if mean_gaps := _mean_gaps([f.rivals.get(name, []) for f in fronts]):
            verdicts.append(f"- {name} against LoRA of each size, the mean gap over the tasks: {mean_gaps}.")
    return "\n\n".join(blocks), verdicts


def _mean_gaps(per_task: list[list[tuple[str, list[float]]]]) -> str:
    """Per size, the mean over tasks of each task's mean gap, with the number of tasks ("" when there is none)."""
    sizes: dict[str, list[float]] = {}
    for reach in per_task:
        for size, gaps in reach:
            sizes.setdefault(size, []).append(statistics.fmean(gaps))
    return ", ".join(
        f"{size} {statistics.fmean(g):+.1f} ({len(g)} task{'s' * (len(g) > 1)})" for size, g in sizes.items()
    )


def _rivals_text(fronts: list[_TaskFront]) -> str:
    """README's clause on the other methods at a schedule's sizes: which of ``RIVALS`` beat LoRA of the same size at
    no size on any task (counting gaps of 2 seeds or more), and where the others are ahead (the gap with its noise)."""
    never, ahead = [], []
    for name, _ in RIVALS:
        cells = [(f.task, size, gaps) for f in fronts for size, gaps in f.rivals.get(name, []) if len(gaps) > 1]
        if wins := [f"{TASK_NAMES[task]} {size} {gap_text(g)}" for task, size, g in cells if gap_word(g) == "ahead"]:
            ahead.append(f"{name} is ahead at {', '.join(wins)}")
        elif cells:
            never.append(name)
    if never:
        names = " and ".join(filter(None, [", ".join(never[:-1]), never[-1]]))
        ahead.insert(0, f"{names} beat{'s' * (len(never) == 1)} a uniform LoRA of the same size at no size on any task")
    return "; ".join(ahead) or "no other method has 2 seeds at a schedule's size yet"


def _pattern_rows(runs: Runs) -> list[tuple[str, str, str, list[dict[str, Any]], list[float]]]:
    """Allocation apart from training, per task: (task, line name, method label, its runs, per-seed gaps to uniform
    LoRA of the same seed) for uniform LoRA itself (no gaps), LoRA at each ``glue.FRONT_PATTERNS`` source's ranks and
    SoRA's own 50% run; only tasks with a pattern run."""
    uniform_r = glue.FRONT_PATTERNS[0][1]
    lines = [
        (f"uniform LoRA r={uniform_r}", "lora", uniform_r),
        *((f"LoRA at the ranks of {SOURCE_NAMES[src]}", label, r) for label, r, (_, src, _) in glue.FRONT_PATTERNS),
        ("SoRA at 50%, its own training", "sora-budget50-const-contribution", glue.RANK),
    ]
    rows, patterns = [], {label for label, _, _ in glue.FRONT_PATTERNS}
    for task in glue.FRONT_TASKS:
        if not any(r["task"] == task and r["method"] in patterns for r in runs.values()):
            continue
        uniform = {seed: x for seed in glue.SEEDS if (x := runs.get(glue.run_name(task, "lora", uniform_r, seed)))}
        for name, label, r in lines:
            if got := {seed: x for seed in uniform if (x := runs.get(glue.run_name(task, label, r, seed)))}:
                gaps = [] if label == "lora" else [score(x) - score(uniform[seed]) for seed, x in got.items()]
                rows.append((task, name, label, list(got.values()), gaps))
    return rows


def pattern_section(runs: Runs) -> str | None:
    """Allocation apart from training: LoRA at the per-module ranks of another run (``glue.FRONT_PATTERNS``) against
    uniform LoRA of that size (gaps paired by seed), with SoRA's own run at that size; None before any pattern run."""
    rows = [
        [TASK_NAMES[task], name, fmt_params(statistics.fmean(x["nonzero_params"] for x in got)),
         fmt_ms([score(x) for x in got]), gap_text(gaps) if gaps else "—"]
        for task, name, _, got, gaps in _pattern_rows(runs)
    ]  # fmt: skip
    return table(["task", "adapter", "parameters", "dev", "− uniform LoRA"], rows) if rows else None


def _pattern_text(runs: Runs) -> str:
    """README's clause on allocation apart from training: each pattern's gap to uniform LoRA per task ("" before
    any pattern run)."""
    rows, parts = _pattern_rows(runs), []
    for label, _, (_, source, _) in glue.FRONT_PATTERNS:
        if gaps := [f"{TASK_NAMES[task]} {gap_text(g)}" for task, _, lab, _, g in rows if lab == label]:
            parts.append(f"at the ranks of {SOURCE_NAMES[source]}, {', '.join(gaps)}")
    if not parts:
        return ""
    return (
        f" Retrained as a plain LoRA at the per-module ranks another run found (`--rank-pattern-from`), against "
        f"uniform LoRA r={glue.FRONT_PATTERNS[0][1]} of the same seed: {'; '.join(parts)}."
    )


def _runs(res: Results) -> tuple[Runs, Runs]:
    """The runs the front reads (the Defaults' LoRA r=8, the Equal-budget runs, the front's own) and its schedules."""
    schedules = _schedules(res.front)
    return {**res.defaults, **res.equal, **{n: r for n, r in res.front.items() if n not in schedules}}, schedules


def _seed_span(fronts: list[_TaskFront]) -> str:
    seeds = sorted({seed for f in fronts for seed in f.schedules})
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"


README_TASK = "sst2"  # the task whose front the README shows
README_MARKERS = ("<!-- front: written by benchmarks/build_report.py from the results -->", "<!-- /front -->")


def readme_block(res: Results) -> str | None:
    """README's "what SoRA is for" paragraph, from the front's results (None before any schedule run)."""
    from sora.schedule import PICK_WITHIN

    runs, schedules = _runs(res)
    fronts = _fronts(runs, schedules)
    if not fronts:
        return None
    png = rel(FIGURES / f"front_{README_TASK}.png", ROOT)
    epochs = sorted({e for f in fronts for e in f.epochs})
    ratios = [t for f in fronts for t in f.time_ratios]
    lines = []
    for f in fronts:
        flat = [
            score(runs[glue.run_name(f.task, "lora", 1, seed)]) - score(runs[glue.run_name(f.task, "lora", 8, seed)])
            for seed in f.schedules
            if glue.run_name(f.task, "lora", 1, seed) in runs and glue.run_name(f.task, "lora", 8, seed) in runs
        ]
        picks = ", ".join(f"{a} at {sa:.1f}" for _, (a, sa), _ in f.picks)
        sweep = ", ".join(f"{b} at {sb:.1f}" for _, _, (b, sb) in f.picks)
        lines.append(
            f"- {TASK_NAMES[f.task]}: {_reach_text(f)}"
            + (f"; it picks per seed {picks}, the sweep {sweep}" if f.picks else "")
            + (f"; LoRA r=1 − r=8: {statistics.fmean(flat):+.1f}" if flat else "")
            + "."
        )
    cost = ""
    if epochs and ratios:
        cost = (
            f", at {', '.join(f'{a / b:.2f}' for a, b in epochs)} of the sweep's optimizer steps "
            f"({min(ratios):.2f}-{max(ratios):.2f} of its measured time)"
        )
    targets = ",".join(f"{t:g}" for t in glue.FRONT_TARGETS)
    return "\n".join(
        [
            README_MARKERS[0],
            f"![{TASK_NAMES[README_TASK]}: dev score against adapter size, the schedule's stages and the sweep]({png})",
            "",
            f"One `sora schedule --target-list {targets}` run trains one adapter down through four sizes (75, 50, 25 "
            "and 12.5% of the r_max=8 adapter) and scores each on dev: the size-accuracy curve a LoRA rank sweep "
            f"(r = 8, 4, 2, 1: four runs) gives{cost}. Against LoRA of each size (MiniLM-L6, "
            f"{_seed_span(fronts)}, gaps paired by seed with their 95% interval; a size is picked as the "
            f"smallest within {PICK_WITHIN:g} point of the curve's best, as `sora schedule` names it):",
            "",
            *lines,
            "",
            "What a schedule gives is the curve and the size read off it in one run, not a better adapter at a size: "
            f"{_rivals_text(fronts)}; what LoRA loses from r=8 to r=1 is on each line above.{_pattern_text(runs)} "
            "The runs, the other methods on the same plot and the commands: "
            "[BENCHMARKS.md](BENCHMARKS.md#the-front-one-schedule-run-against-the-lora-rank-sweep).",
            README_MARKERS[1],
        ]
    )


def render(res: Results) -> str:
    runs, schedules = _runs(res)
    out = ["\n## The front: one schedule run against the LoRA rank sweep\n"]
    if not schedules:
        out.append("Not measured: `python benchmarks/glue.py front --data-dir DIR`.")
        return "\n".join(out)
    blocks, verdicts = front_section(runs, schedules, res.out_dir)
    targets = ",".join(f"{t:g}" for t in glue.FRONT_TARGETS)
    out += [
        f"One `sora schedule --target-list {targets}` run per seed (the Defaults recipe: the whole train split, "
        f"SST-2 a 20k subset; {glue.FRONT_SCHEDULE['epochs_per_stage']:g} epoch per stage at a constant learning rate "
        "after warmup; gates start at 1.0 and the budget tops up by contribution, as `sora train --target-ratio`) "
        "scores a pruned adapter at every stage: the size-accuracy curve that a LoRA rank sweep (r = 1, 2, 4, 8: "
        "four `sora train` runs of 3 epochs) gives. Each stage lands on a sweep size (75, 50, 25, 12.5% of the "
        "r_max=8 adapter = LoRA r 6, 4, 2, 1). The other lines: AdaLoRA (`target_r`), EVA (PEFT's data-driven "
        "allocation, `--method eva --r R`) and SoRA trained once per size (`--target-ratio`), all at the "
        "`sora train` defaults; each table sets them, like the schedule, against LoRA of each stage's size. Gaps are "
        "paired by seed, with their 95% interval.\n",
        blocks,
        "\n**Verdict, per size (the schedule's stage against LoRA of that size):**\n",
        "\n".join(verdicts),
        "\nA size is reached where the gap is within noise or ahead. Stage k of a schedule has had k epochs of "
        "training in all and each sweep run 3, so the first stage (75%) is the least trained point of the curve.",
        "\n### Allocation apart from training: LoRA at the ranks another method found\n",
        "`sora train --method lora --rank-pattern-from RESULT` retrains a plain LoRA with the per-module ranks of "
        "another run, at LoRA r=4's scale: SoRA's learned allocation at 50% (the Equal-budget run of the same seed) "
        "and EVA's (r=4). Against uniform LoRA r=4 of the same seed, this says whether the ranks are better ranks, "
        "apart from how SoRA trains them.\n",
        (pattern_section(runs) or "Not measured yet (`python benchmarks/glue.py front` runs them).") + "\n",
    ]
    return "\n".join(out)
