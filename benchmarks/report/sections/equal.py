"""## Equal budget: SoRA at a sparsity budget against LoRA and AdaLoRA of about that size, the paired gaps task by
task, and the verdict on the paper's claim; the same on a GPU where benchmarks/gpu_defaults.sh ran."""

from __future__ import annotations

import collections

import glue

from ..load import GLUE_GPU, Results, Runs, load, paired, score
from ..markdown import METHOD_NAMES, TASK_NAMES, fmt_params, table
from ..stats import NOISE_NOTE, differences, gap_text, gap_word, tally

# The Equal-budget table's rows: (label, rank, the budget's share of the r_max=8 adapter); LoRA r=8 from the Defaults
EQUAL_ROWS = (
    ("lora", glue.RANK, 1.0),
    *((label, r, ratio or r / glue.RANK) for label, r, ratio, _ in glue.EQUAL_BUDGET),
)
BUDGETS = {label: ratio for label, _, ratio, _ in glue.EQUAL_BUDGET if ratio}  # SoRA's budgeted labels
# The budgeted labels whose allocation the data chose (glue.LEARNED); the others keep the paper's N(0, 1) gates
LEARNED = [label for label, _, ratio, settings in glue.EQUAL_BUDGET if ratio and settings == glue.LEARNED]
# LoRA at SoRA's update scale: alpha / r of its modules equal to SoRA's alpha / r_max
SCALED = next(label for label, _, ratio, settings in glue.EQUAL_BUDGET if not ratio and "lora_alpha" in settings)


def equal_name(label: str, r: int) -> str:
    if label in BUDGETS:
        return f"SoRA r_max={r}, budget {BUDGETS[label]:g}" + (", learned allocation" if label in LEARNED else "")
    return METHOD_NAMES[label].replace(f"={glue.RANK}", f"={r}")


def equal_rivals(label: str) -> list[tuple[str, int]]:
    """What a SoRA budget is compared with: LoRA and AdaLoRA (at their default scale) of the nearest equal rank, and
    the Defaults' LoRA r=8."""
    rank = round(BUDGETS[label] * glue.RANK)
    nearest = [(m, r) for m, r, ratio, settings in glue.EQUAL_BUDGET if not ratio and not settings and r == rank]
    return [*nearest, ("lora", glue.RANK)]


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
        "are the nearest equal sizes (75% and 50%); LoRA r=8 is the Defaults run of the same seed. *Learned "
        "allocation*: constant gates (`--gate-init 1.0`) and the contribution top-up (`--budget-score "
        "contribution`), the variant whose surviving ranks the data chose (Allocation section); the other SoRA rows "
        "keep the paper's N(0, 1) gates. *alpha 8*: LoRA r=4 at `--lora-alpha 8`, SoRA's update scale (alpha / r "
        "= 16 / 8 = 2; LoRA r=4 at its default alpha 16 scales by 4). Everything else at the `sora train` "
        "defaults. Distance from the target over all runs: "
        + ", ".join(f"{name} {min(d):+.1f}% to {max(d):+.1f}%" for name, d in off.items() if name != "LoRA")
        + " (AdaLoRA's `target_r` sets a total rank that its masks share out, not a parameter count; LoRA's size is "
        "exact).\n\n"
    )
    lines = []
    gaps = collections.defaultdict(lambda: collections.defaultdict(list))  # budget label -> rival -> gaps per task
    seeds_of = collections.defaultdict(lambda: collections.defaultdict(list))  # budget label -> task -> pair counts
    for label in BUDGETS:
        for rival, r in equal_rivals(label):
            found = _gap_line(runs, (label, glue.RANK), (rival, r), seeds_of[label])
            if found:
                lines.append(found[0])
                gaps[label][rival] += found[1]
    if not lines:
        return text
    claims = []
    for learned, allocation in ((False, "the paper's N(0, 1) gates"), (True, "the learned allocation")):
        labels = [label for label in BUDGETS if (label in LEARNED) == learned and label in gaps]
        complete = [label for label in labels if min(min(n) for n in seeds_of[label].values()) >= len(glue.SEEDS)]
        if labels:
            claims.append(verdict(gaps, complete, [label for label in labels if label not in complete], allocation))
    return (
        text
        + f"Paired by seed, dev points ({NOISE_NOTE}):\n\n"
        + "\n".join(lines)
        + "\n\n"
        + "\n\n".join(claims)
        + "\n\n"
        + factors(runs)
        + "\n\n"
        + EQUAL_READING
    )


def _gap_line(
    runs: Runs, a: tuple[str, int], b: tuple[str, int], seeds_of: dict | None = None
) -> tuple[str, list[list[float]]] | None:
    """The line of ``a``'s paired gaps to ``b`` ((label, rank) each) task by task, and those gaps (None: no pair);
    ``seeds_of``: task -> the pair counts, appended to."""
    parts, gaps = [], []
    for task in glue.DEFAULTS_SAMPLES:
        pairs = paired(runs, task, a[0], b[0], (a[1], b[1]))
        if seeds_of is not None:
            seeds_of[task].append(len(pairs))
        if pairs:
            diffs = differences(pairs, score)
            parts.append(f"{TASK_NAMES[task]} {gap_text(diffs)}")
            gaps.append(diffs)
    if not parts:
        return None
    return f"- {equal_name(*a)} − {equal_name(*b)}: " + "; ".join(parts), gaps


def factors(runs: Runs) -> str:
    """Why SoRA at a budget and LoRA of equal size differ, one factor at a time: the allocation (the learned one
    against the N(0, 1) one at each budget), the scale (LoRA r=4 at SoRA's alpha / r against its own default) and,
    with both matched, what is left: the training (the learned SoRA at 50% against LoRA r=4 at SoRA's scale)."""
    rank = dict((label, r) for label, r, _, _ in glue.EQUAL_BUDGET)
    plain = {ratio: label for label, ratio in BUDGETS.items() if label not in LEARNED}
    comparisons = {
        "Allocation": [((label, glue.RANK), (plain[BUDGETS[label]], glue.RANK)) for label in LEARNED],
        "Scale": [((SCALED, rank[SCALED]), ("lora", rank[SCALED]))],
        "Training (allocation learned, size and scale matched)": [
            ((label, glue.RANK), (SCALED, rank[SCALED])) for label in LEARNED
            if round(BUDGETS[label] * glue.RANK) == rank[SCALED]
        ],
    }  # fmt: skip
    out, reading = [], []
    for factor, pairs in comparisons.items():
        for a, b in pairs:
            if found := _gap_line(runs, a, b):
                t = tally(found[1])
                out.append(
                    f"{found[0].replace('- ', f'- **{factor}**: ', 1)}. Over the {t.comparisons} tasks: ahead in "
                    f"{t.ahead}, within noise in {t.within}, behind in {t.behind}, mean below 0 in {t.below}."
                )
                if all(len(d) >= len(glue.SEEDS) for d in found[1]) and t.comparisons == len(glue.DEFAULTS_SAMPLES):
                    verb = t.says(equal_name(*b))
                    reading.append(
                        f"{factor.split()[0].lower()}: {equal_name(*a)} {verb} (mean above in "
                        f"{t.comparisons - t.below} of {t.comparisons} tasks)"
                    )
    if not out:
        return ""
    text = "The three factors, one at a time (paired by seed, as above):\n\n" + "\n".join(out)
    if reading:
        text += "\n\n**Allocation, scale, training**, where every task has every seed: " + "; ".join(reading) + "."
    return text


def verdict(
    gaps: dict[str, dict[str, list[list[float]]]], complete: list[str], pending: list[str], allocation: str
) -> str:
    """The verdict on the paper's claim from the paired gaps (``gaps``: budget label -> rival method -> one list of
    per-seed differences per task) of the budgets with ``allocation`` that have every seed of every comparison
    (``complete``); the budgets still short of seeds (``pending``) are named, and without a complete one the verdict
    is "not yet"."""
    claim = f"**Verdict on the paper's claim (SoRA beats LoRA and AdaLoRA with fewer parameters), {allocation}"
    waiting = (
        f"{' and '.join(f'{BUDGETS[label]:g}' for label in pending)} {'has' if len(pending) == 1 else 'have'} fewer "
        f"than {len(glue.SEEDS)} seeds of every comparison on every task yet: `python benchmarks/glue.py equal`"
    )
    if not complete:
        words = collections.Counter(gap_word(d) for label in pending for diffs in gaps[label].values() for d in diffs)
        return (
            f"{claim}: not yet.** Of the task comparisons above, "
            + ", ".join(f"{word} in {n}" for word, n in words.most_common())
            + f"; the budget {waiting}."
        )
    by_rival = collections.defaultdict(list)
    for label in complete:
        for rival, diffs in gaps[label].items():
            by_rival[rival] += diffs
    tallies = {rival: tally(diffs) for rival, diffs in by_rival.items()}
    parts, outcome = [], []
    for rival, t in tallies.items():
        name = METHOD_NAMES[rival].split()[0]
        parts.append(
            f"against {name} ({t.comparisons} task comparisons) SoRA is ahead in {t.ahead}, within noise in "
            f"{t.within} and behind in {t.behind} (mean below {name}'s in {t.below})"
        )
        outcome.append(t.says(name))
    shares = " and ".join(f"{100 * BUDGETS[label]:.0f}%" for label in complete)
    held = all(t.outcome == "beats" for t in tallies.values())
    reading = "; ".join(parts)
    later = f" (The budget {waiting}.)" if pending else ""
    return (
        f"{claim}: {'holds' if held else 'not reproduced'} here.** {reading[0].upper()}{reading[1:]}. At {shares} of "
        f"LoRA r={glue.RANK}'s parameters, SoRA {' and '.join(outcome)}.{later}"
    )


EQUAL_READING = (
    "How far the verdict reaches: the task comparisons are not independent trials (on a task, both budgets meet the "
    "same LoRA r=8 runs, and every row shares its seeds), so a count of means below a rival is no sign test. It is "
    "MiniLM-L6 for 3 epochs on a CPU, not the paper's DeBERTaV3-base with its per-task settings: these runs test the "
    "claim's direction at this scale, not the paper's numbers."
)


def render(res: Results) -> str:
    out = [
        "## Equal budget: SoRA at a sparsity budget against LoRA and AdaLoRA of that size\n",
        equal_section(res.equal, res.defaults) + "\n",
    ]
    if gpu_equal := load("equal", root=GLUE_GPU):
        out.append("On the GPU:\n\n" + equal_section(gpu_equal, res.gpu_defaults) + "\n")
    return "\n".join(out)
