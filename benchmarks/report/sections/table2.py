"""## Table 2 analog: SoRA r_max against LoRA r at each rank (seed 0), and how often SoRA scores at least LoRA's
score."""

from __future__ import annotations

import glue

from ..load import Results, Runs, score
from ..markdown import TASK_NAMES, fmt_params, table


def table2_summary(t2: Runs) -> str:
    """How often SoRA scores at least LoRA's score at the same r, and its share of LoRA's parameters."""
    wins, pairs, shares, per_task = 0, 0, [], []
    for task in glue.TABLE2_TASKS:
        task_wins, task_pairs, lost = 0, 0, []
        for r in glue.RANKS:
            lo, so = (t2.get(glue.run_name(task, m, r, 0)) for m in ("lora", "sora"))
            if lo and so:
                pairs += 1
                task_pairs += 1
                won = score(so) >= score(lo)
                wins += won
                task_wins += won
                if not won:
                    lost.append(f"r={r}: {score(so):.1f} vs {score(lo):.1f}")
                shares.append(so["nonzero_params"] / lo["nonzero_params"])
        if task_pairs:
            per_task.append(
                f"{TASK_NAMES[task]} {task_wins}/{task_pairs}" + (f" (behind at {'; '.join(lost)})" if lost else "")
            )
    if not pairs:
        return ""
    return (
        f"SoRA scores at least LoRA's score in {wins} of {pairs} (task, r) pairs, one seed each, with "
        f"{100 * min(shares):.0f}-{100 * max(shares):.0f}% of LoRA's parameters at the same r "
        f"({', '.join(TASK_NAMES[t] for t in glue.TABLE2_TASKS)}; see Table 2 and the caveat on which tasks learn). "
        f"Per task: {', '.join(per_task)}."
    )


def table2_section(t2: Runs) -> str:
    if not t2:
        return ""
    rows = []
    for task in glue.TABLE2_TASKS:
        for r in glue.RANKS:
            lo = t2.get(glue.run_name(task, "lora", r, 0))
            so = t2.get(glue.run_name(task, "sora", r, 0))
            if not (lo or so):
                continue
            live = f"{sum(so['ranks'].values())}/{36 * r}" if so else "—"
            rows.append(
                [TASK_NAMES[task], r, f"{score(lo):.1f}" if lo else "—", f"{score(so):.1f}" if so else "—",
                 fmt_params(lo["nonzero_params"]) if lo else "—", fmt_params(so["nonzero_params"]) if so else "—",
                 live]
            )  # fmt: skip
    header = ["task", "r / r_max", "LoRA", "SoRA", "LoRA params", "SoRA params", "SoRA live ranks"]
    return table(header, rows)


def render(res: Results) -> str:
    text = table2_section(res.t2)
    return "\n".join(
        [
            "## Table 2 analog: SoRA r_max vs LoRA r (seed 0)\n",
            (text + "\n\nScores: accuracy; the r=8 rows are the Table 1 runs (seed 0).")
            if text
            else "Not measured: `python benchmarks/glue.py table2`.",
        ]
    )
