"""## The paper's claims at CPU scale, read off the Defaults table task by task, paired by seed."""

from __future__ import annotations

import statistics

import glue

from ..load import Results, Runs, paired, score
from ..markdown import METHOD_NAMES, TASK_NAMES
from ..stats import NOISE_NOTE, differences, gap_text


def defaults_claims(runs: Runs) -> str:
    """The paper's claims read off the Defaults table, task by task, paired by seed: no cross-task averages."""
    if not runs:
        return "Not measured yet: `python benchmarks/glue.py defaults`."
    lines = []
    for rival, claim in (("lora", "SoRA beats LoRA"), ("adalora", "SoRA beats AdaLoRA")):
        parts = []
        for task in glue.DEFAULTS_SAMPLES:
            pairs = paired(runs, task, "sora-default", rival)
            if pairs:
                parts.append(f"{TASK_NAMES[task]} {gap_text(differences(pairs, score))}")
        lines.append(f"- **{claim}** (SoRA − {METHOD_NAMES[rival]}, dev points, paired by seed): " + "; ".join(parts))
    lines[-1] += f" ({NOISE_NOTE})"
    shares = []
    for task in glue.DEFAULTS_SAMPLES:
        pairs = paired(runs, task, "sora-default", "lora")
        if pairs:
            share = statistics.fmean(a["nonzero_params"] / b["nonzero_params"] for a, b in pairs)
            shares.append(f"{TASK_NAMES[task]} {100 * share:.0f}%")
    lines.append("- **~70% of LoRA's parameters**: SoRA's exported adapter over LoRA's, per task: " + ", ".join(shares))
    times = []
    for rival in ("adalora", "lora"):
        ratios = [a["seconds_per_epoch"] / b["seconds_per_epoch"] for t in glue.DEFAULTS_SAMPLES
                  for a, b in paired(runs, t, "sora-default", rival)]  # fmt: skip
        if ratios:
            times.append(f"SoRA / {METHOD_NAMES[rival]} {statistics.median(ratios):.2f} ({len(ratios)} pairs)")
    lines.append(
        "- **~70% of AdaLoRA's training time**: median of the per-run ratios of seconds per epoch, "
        + ", ".join(times)
        + " (the runs shared the 2 cores with other runs, not interleaved: Table 4 below is the controlled timing)."
    )
    return "\n".join(lines)


def render(res: Results) -> str:
    return "\n".join(
        [
            "## The paper's claims at CPU scale\n",
            "From the Defaults table (the current recipe, full training sets, 3 epochs):\n",
            defaults_claims(res.defaults) + "\n",
        ]
    )
