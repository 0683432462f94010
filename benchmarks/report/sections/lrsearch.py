"""## Learning-rate search: the same budget of learning rates for every method on one task, and the rate chosen."""

from __future__ import annotations

import glue

from ..load import Results, Runs, score
from ..markdown import METHOD_NAMES, TASK_NAMES, table


def hpsearch_section(hp: Runs) -> str:
    rows = []
    for m in glue.METHODS:
        best = glue.best_lr(m)
        for k, lr in enumerate(glue.LR_TRIALS[m]):
            r = hp.get(glue.run_name(glue.HP_TASK, m, glue.RANK, 0, k))
            rows.append([METHOD_NAMES[m], f"{lr:g}", f"{score(r):.1f}" if r else "not run",
                         "**chosen**" if best == lr else ""])  # fmt: skip
    return table(["method", "lr", f"{TASK_NAMES[glue.HP_TASK]} acc (seed 0)", ""], rows)


def render(res: Results) -> str:
    out = ["\n## Learning-rate search\n"]
    out.append(
        f"The same budget for every method: {len(glue.LR_TRIALS['lora'])} learning rates on "
        f"{TASK_NAMES[glue.HP_TASK]}, seed 0; the best dev score is used on every task and seed. The chosen trial is "
        f"also the Table 1 run of {TASK_NAMES[glue.HP_TASK]} seed 0 (so that cell was selected on its own dev set, "
        "as in the paper).\n"
    )
    out.append(hpsearch_section(res.hp))
    return "\n".join(out)
