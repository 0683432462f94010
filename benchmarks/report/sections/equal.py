"""## Equal budget: SoRA at a sparsity budget against LoRA and AdaLoRA of about that size, the paired gaps task by
task, and the verdict on the paper's claim; the same on a GPU where benchmarks/gpu_defaults.sh ran."""

from __future__ import annotations

import collections

import glue

from ..load import GLUE_GPU, Results, Runs, load, paired, score
from ..markdown import METHOD_NAMES, TASK_NAMES, fmt_params, table
from ..stats import NOISE_NOTE, differences, gap_text, gap_word, tally

# The Equal-budget table's rows: (label, rank, the budget's share of the r_max=8 adapter); LoRA r=8 from the Defaults
EQUAL_ROWS = (("lora", glue.RANK, 1.0), *((label, r, ratio or r / glue.RANK) for label, r, ratio in glue.EQUAL_BUDGET))


BUDGETS = {label: ratio for label, _, ratio in glue.EQUAL_BUDGET if ratio}  # SoRA's budgeted labels


def equal_name(label: str, r: int) -> str:
    if label in BUDGETS:
        return f"SoRA r_max={r}, budget {BUDGETS[label]:g}"
    return METHOD_NAMES[label].replace(f"={glue.RANK}", f"={r}")


def equal_rivals(label: str) -> list[tuple[str, int]]:
    """What a SoRA budget is compared with: the rows of the nearest equal rank, and the Defaults' LoRA r=8."""
    rank = round(BUDGETS[label] * glue.RANK)
    return [(m, r) for m, r, ratio in glue.EQUAL_BUDGET if not ratio and r == rank] + [("lora", glue.RANK)]


def equal_section(equal: Runs, defaults: Runs) -> str:
    """SoRA at a sparsity budget against LoRA and AdaLoRA of about that size (and the Defaults' LoRA r=8): score,
    size and distance from the target per seed; then SoRA's paired gaps to its rivals, task by task."""
    lora_size = max((r["nonzero_params"] for r in defaults.values() if r["method"] == "lora"), default=None)
    if not equal or lora_size is None:
        return "Not measured: `python benchmarks/glue.py equal` (after the Defaults table)."
    seeds = sorted({r["seed"] for r in equal.values()})
    runs = {**defaults, **equal}
    rows, off = [], collections.defaultdict(list)
    for task in sorted({r["task"] for r in equal.values()}, key=list(glue.DEFAULTS_SAMPLES).index):
        for label, r, ratio in EQUAL_ROWS:
            got = {s: runs.get(glue.run_name(task, label, r, s)) for s in seeds}
            if not any(got.values()):
                continue
            target = ratio * lora_size
            distance = {s: 100 * (x["nonzero_params"] / target - 1) for s, x in got.items() if x}
            off[equal_name(label, r).split()[0]] += distance.values()
            cells = [
                f"{score(x):.1f} ({fmt_params(x['nonzero_params'])}, {distance[s]:+.1f}%)" if x else "—"
                for s, x in got.items()
            ]
            values = [score(x) for x in got.values() if x]
            spread = f"{min(values):.1f}–{max(values):.1f}" if len(values) > 1 else "—"
            rows.append([TASK_NAMES[task], equal_name(label, r), fmt_params(target), *cells, spread])
    text = (
        table(["task", "method", "target", *(f"seed {s}" for s in seeds), "min–max"], rows)
        + "\n\nCells: dev score (adapter parameters, distance from the target). Target: the budget's share of the "
        f"r_max=8 adapter ({fmt_params(lora_size)}): SoRA's `--target-ratio`; LoRA and AdaLoRA at ranks 6 and 4 "
        "are the nearest equal sizes (75% and 50%); LoRA r=8 is the Defaults run of the same seed. Everything else "
        "at the `sora train` defaults. Distance from the target over all runs: "
        + ", ".join(f"{name} {min(d):+.1f}% to {max(d):+.1f}%" for name, d in off.items() if name != "LoRA")
        + " (AdaLoRA's `target_r` sets a total rank that its masks share out, not a parameter count; LoRA's size is "
        "exact).\n\n"
    )
    lines, gaps, seeds_of = [], collections.defaultdict(list), collections.defaultdict(list)
    for label in BUDGETS:
        for rival, r in equal_rivals(label):
            parts = []
            for task in glue.DEFAULTS_SAMPLES:
                pairs = paired(runs, task, label, rival, (glue.RANK, r))
                seeds_of[task].append(len(pairs))
                if pairs:
                    diffs = differences(pairs, score)
                    parts.append(f"{TASK_NAMES[task]} {gap_text(diffs)}")
                    gaps[rival].append(diffs)
            if parts:
                lines.append(f"- {equal_name(label, glue.RANK)} − {equal_name(rival, r)}: " + "; ".join(parts))
    if not lines:
        return text
    short = {TASK_NAMES[t]: min(n) for t, n in seeds_of.items() if min(n) < len(glue.SEEDS)}
    return text + f"Paired by seed, dev points ({NOISE_NOTE}):\n\n" + "\n".join(lines) + "\n\n" + verdict(gaps, short)


def verdict(gaps: dict[str, list[list[float]]], short: dict[str, int]) -> str:
    """The verdict on the paper's claim from the paired gaps of SoRA's budgets to each rival method (``gaps``:
    method -> one list of per-seed differences per task comparison); "not yet" while ``short`` names tasks with
    fewer seeds than the tables want."""
    claim = "**Verdict on the paper's claim (SoRA beats LoRA and AdaLoRA with fewer parameters)"
    if short:
        words = collections.Counter(gap_word(d) for diffs in gaps.values() for d in diffs)
        missing = ", ".join(f"{t} {n} seed{'s' * (n != 1)}" for t, n in short.items())
        return (
            f"{claim}: not yet.** Of the task comparisons above, "
            + ", ".join(f"{word} in {n}" for word, n in words.most_common())
            + f"; a verdict needs {len(glue.SEEDS)} seeds of every comparison on every task, and has fewer for "
            f"{missing} (`python benchmarks/glue.py equal`)."
        )
    tallies = {rival: tally(diffs) for rival, diffs in gaps.items()}
    parts, outcome = [], []
    for rival, t in tallies.items():
        name = METHOD_NAMES[rival].split()[0]
        parts.append(
            f"against {name} ({t.comparisons} task comparisons) SoRA is ahead in {t.ahead}, within noise in "
            f"{t.within} and behind in {t.behind} (mean below {name}'s in {t.below})"
        )
        outcome.append(OUTCOME[t.outcome].format(name=name))
    shares = " and ".join(f"{100 * ratio:.0f}%" for ratio in BUDGETS.values())
    held = all(t.outcome == "beats" for t in tallies.values())
    reading = "; ".join(parts)
    return (
        f"{claim}: {'holds' if held else 'not reproduced'} here.** {reading[0].upper()}{reading[1:]}. At {shares} of "
        f"LoRA r={glue.RANK}'s parameters, SoRA {' and '.join(outcome)}.\n\n{EQUAL_READING}"
    )


# The verdict rule's outcome against a rival (stats.Tally.outcome) in words
OUTCOME = {
    "beats": "beats {name}",
    "behind": "is behind {name}",
    "trails": "trails {name} (every mean below, most gaps within noise)",
    "level": "is level with {name} within noise",
}


EQUAL_READING = (
    "How far the verdict reaches: the task comparisons are not independent trials (on a task, both budgets meet the "
    "same LoRA r=8 runs, and every row shares its seeds), so a count of means below a rival is no sign test. It is "
    "MiniLM-L6 for 3 epochs on a CPU, not the paper's DeBERTaV3-base with its per-task settings: these runs test the "
    "claim's direction at this scale, not the paper's numbers."
)


def render(res: Results) -> str:
    out = [
        "## Equal budget: SoRA at a sparsity budget against LoRA and AdaLoRA of that size\n",
        equal_section(load("equal"), res.defaults) + "\n",
    ]
    if gpu_equal := load("equal", root=GLUE_GPU):
        out.append("On the GPU:\n\n" + equal_section(gpu_equal, res.gpu_defaults) + "\n")
    return "\n".join(out)
