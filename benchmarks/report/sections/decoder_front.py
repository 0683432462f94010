"""## The front on the embedded decoder (``python benchmarks/decoder.py --front``): per seed one ``sora schedule
--task causal-lm --target-list`` run through the GLUE front's sizes, each stage's adapter scored on the dev files,
against the LoRA rows of each size (the decoder rows' r=8 and r=4, the front's r=2 and r=1), paired by seed: chat
SST-2's exact match and SST-2 text's dev loss, and the schedule's training time against the sweep's."""

from __future__ import annotations

import statistics
from typing import Any

import decoder
import glue

from ..load import Results, Runs
from ..markdown import fmt_params, table
from ..stats import NOISE_NOTE, gap_text
from .decoder import TASK_NAMES, exact, lower_loss

# The LoRA row of each stage's size (a share of the r_max=8 adapter; there is no r=6 row): the decoder row that is
# plain LoRA at that rank; and the sweep a schedule replaces. The measures: (name, value of a run or a stage's scores).
LORA_AT = {
    ratio: label
    for ratio in glue.FRONT_TARGETS
    for label, settings in {**decoder.ROWS, **decoder.FRONT_ROWS}.items()
    if settings == {"method": "lora", "r": glue.front_stage_rank(ratio)}
}
SWEEP = ("lora", *LORA_AT.values())
MEASURES = (
    (f"{TASK_NAMES['sst2']} exact match (points)", exact("sst2")),
    (f"{TASK_NAMES[decoder.TEXT_TASK]} dev loss (% lower)", lower_loss(decoder.TEXT_TASK)),
)


def front_rows(rows: Runs, schedules: list[dict[str, Any]]) -> tuple[list[list[str]], list[str]]:
    """The table (per stage size: the schedule's parameters, then per measure the stage's and LoRA's mean and their
    gap paired by seed) and the verdict lines (per measure, each size's gap word); ``rows``: the decoder rows by run
    name (``decoder.run_name``)."""
    table_rows, reach = [], {name: [] for name, _ in MEASURES}
    for k, ratio in enumerate(glue.FRONT_TARGETS):
        stages = [(s["seed"], s["stages"][k]) for s in schedules if len(s["stages"]) > k]
        if not stages:
            continue
        label = LORA_AT.get(ratio)
        row = [f"{100 * ratio:g}%" + (f" (LoRA r={glue.front_stage_rank(ratio)})" if label else "")]
        row.append(fmt_params(statistics.fmean(stage["nonzero_params"] for _, stage in stages)))
        lora = {seed: x for seed, _ in stages if label and (x := rows.get(decoder.run_name(label, seed)))}
        for name, value in MEASURES:
            gaps = [value(stage) - value(lora[seed]) for seed, stage in stages if seed in lora]
            row += [
                f"{statistics.fmean(value(stage) for _, stage in stages):.1f}",
                f"{statistics.fmean(map(value, lora.values())):.1f}" if lora else "—",
                gap_text(gaps) if gaps else "—",
            ]
            if gaps:
                reach[name].append(f"{100 * ratio:g}% {gap_text(gaps)}")
        table_rows.append(row)
    return table_rows, [f"- {name}: {'; '.join(sizes)}." for name, sizes in reach.items() if sizes]


def cost_text(rows: Runs, schedules: list[dict[str, Any]]) -> str:
    """Per seed, the schedule's training seconds over its LoRA sweep's (the four rows), where the sweep is complete."""
    ratios = []
    for s in schedules:
        sweep = [rows.get(decoder.run_name(label, s["seed"])) for label in SWEEP]
        if len(s["stages"]) == len(glue.FRONT_TARGETS) and all(sweep):
            seconds = sum(stage["seconds"] for stage in s["stages"])
            ratios.append(f"seed {s['seed']} {seconds / sum(x['train_seconds'] for x in sweep):.2f}")
    return ", ".join(ratios)


def render(res: Results) -> str:
    front = res.decoder_front
    schedules = sorted((r for r in front.values() if "stages" in r), key=lambda r: r["seed"])
    out = ["\n## The front on the embedded decoder\n"]
    if not schedules:
        out.append(f"Not measured yet (a GPU job: `{decoder.RUNNER} --front`).")
        return "\n".join(out)
    rows = {**res.decoder, **{n: r for n, r in front.items() if "stages" not in r}}
    table_rows, verdicts = front_rows(rows, schedules)
    header = ["size", "schedule parameters"]
    for name, _ in MEASURES:
        header += [f"{name}: schedule", "LoRA", "schedule − LoRA"]
    cost = cost_text(rows, schedules)
    out += [
        f"One `sora schedule --task causal-lm` run per seed (seeds {', '.join(str(s['seed']) for s in schedules)}; "
        f"`{schedules[0]['command']}`), a third of a row's training per stage, each stage's adapter scored on the "
        f"dev files, against the LoRA row of each size ({NOISE_NOTE}; dev loss % lower: 100 ln(LoRA's loss / the "
        "stage's), positive when the stage is better).\n",
        table(header, table_rows),
        "\n" + ("\n".join(verdicts) if verdicts else "No paired LoRA row yet."),
    ]
    if cost:
        out.append(f"\nThe schedule's training time over its LoRA sweep's (r = 8, 4, 2, 1): {cost}.")
    return "\n".join(out)
