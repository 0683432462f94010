"""## Allocation: who chooses the surviving ranks, the gates' initialisation or the data? (``glue.py allocation``)

Per variant, three runs (``glue.ALLOCATION_RUNS``): the survivors' share among the largest initial ``|g|`` against
its chance level (``metrics.json``'s ``allocation``), the survivors shared by two runs that differ in the gate seed
alone and by two that differ in the data order alone, against chance (``sora.allocation.survivor_overlap`` of the
results' ``survivors``), and the dev score; a bar figure of the three shares, and the rank heatmaps of the default
and of the variant whose allocation follows the data most, side by side."""

from __future__ import annotations

import statistics
from pathlib import Path

import glue

from ..load import FIGURES, Results, Runs, score
from ..markdown import TASK_NAMES, rank_pattern, rel, table

LABELS = {
    "sora-randn": "N(0, 1) gates (default)",
    "sora-const": "constant gates 1.0",
    "sora-randn-gatelr": "N(0, 1) gates, gate lr 1e-2",
    "sora-const-gatelr": "constant gates 1.0, gate lr 1e-2",
    "sora-randn-contribution": "N(0, 1) gates, contribution top-up",
    "sora-const-contribution": "constant gates 1.0, contribution top-up",
}
# (what, colour) of the figure's three pairs of bars, in the order of _Row's shares
SHARES = (
    ("survivors among the largest initial |g|", "tab:red"),
    ("survivors shared by two gate seeds", "tab:blue"),
    ("survivors shared by two data orders", "tab:green"),
)


def _runs(results: Runs) -> dict[str, list[dict]]:
    """The runs of each variant of glue.ALLOCATION in glue.ALLOCATION_RUNS order (the variants with all of them)."""
    out = {}
    for label, _ in glue.ALLOCATION:
        runs = [
            results.get(glue.run_name(glue.ALLOCATION_TASK, label, glue.RANK, seed, f"gateseed{gate_seed}"))
            for seed, gate_seed in glue.ALLOCATION_RUNS
        ]
        if all(runs):
            out[label] = runs
    return out


def _shared(a: dict, b: dict) -> dict[str, float]:
    import torch

    from sora.allocation import survivor_overlap

    n = a["allocation"]["gates"]
    a, b = (torch.zeros(n).index_fill_(0, torch.tensor(r["survivors"], dtype=torch.long), 1.0) for r in (a, b))
    return survivor_overlap(a, b)


def _shares(runs: list[dict]) -> list[tuple[float, float]]:
    """(share, chance) of: survivors among the largest initial |g| (mean of the runs), shared by the two gate seeds
    (runs 0 and 1), shared by the two data orders (runs 0 and 2)."""
    init = (
        statistics.fmean(r["allocation"]["overlap"] for r in runs),
        statistics.fmean(r["allocation"]["chance"] for r in runs),
    )
    gate, data = _shared(runs[0], runs[1]), _shared(runs[0], runs[2])
    return [init, (gate["overlap"], gate["chance"]), (data["overlap"], data["chance"])]


def _figure(summary: dict[str, list[tuple[float, float]]], path: Path) -> Path:
    """Grouped bars per variant: each share (solid) beside its chance level (hatched), in percent."""
    import matplotlib.pyplot as plt
    import numpy as np

    from sora.analysis import DPI, FIG_HEIGHT, FIG_WIDTH

    x, width = np.arange(len(summary)), 0.13
    fig, ax = plt.subplots(figsize=(FIG_WIDTH * 1.3, FIG_HEIGHT))
    for k, (name, color) in enumerate(SHARES):
        for j, hatched in enumerate((False, True)):
            values = [100 * shares[k][j] for shares in summary.values()]
            offset = (2 * k + j - 2.5) * width
            label = f"{name}: chance" if hatched else name
            style = {"alpha": 0.35, "hatch": "//"} if hatched else {"alpha": 0.9}
            ax.bar(x + offset, values, width, color=color, label=label, **style)
    ax.set_xticks(x, [LABELS.get(label, label).replace("gates, ", "gates,\n") for label in summary], fontsize=7)
    ax.set_ylabel("% of the surviving gate entries")
    ax.set_ylim(0, 119)
    ax.legend(fontsize=7, loc="upper center", ncol=3)
    ax.set_title(f"{TASK_NAMES[glue.ALLOCATION_TASK]}: who chooses SoRA's surviving ranks")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _heatmaps(variants: dict[str, list[dict]], labels: list[str], out_dir: Path) -> str:
    """The rank heatmaps (first run) of ``labels``, side by side, and the pattern each shows."""
    from sora.analysis import plot_rank_heatmap

    cells, names, patterns = [], [], []
    for label in labels:
        name, ranks = LABELS.get(label, label), variants[label][0]["ranks"]
        path = FIGURES / f"ranks_allocation_{label}.png"
        plot_rank_heatmap(ranks, glue.RANK, path, title=f"{name}: ranks")
        cells.append(f"![{name}]({rel(path, out_dir)})")
        names.append(name)
        patterns.append(rank_pattern(name, ranks))
    return table(names, [cells], "l" * len(labels)) + "\n\n" + " ".join(patterns)


def _pct(share: tuple[float, float]) -> str:
    return f"{100 * share[0]:.1f} ({100 * share[1]:.1f})"


def render(res: Results) -> str:
    variants = _runs(res.allocation)
    if not variants:
        return ""
    summary = {label: _shares(runs) for label, runs in variants.items()}
    rows = []
    for label, runs in variants.items():
        ranks = [v for r in runs for v in r["ranks"].values()]
        rows.append(
            [
                LABELS.get(label, label),
                " / ".join(f"{score(r):.1f}" for r in runs),
                f"{statistics.fmean(r['allocation']['survivors'] for r in runs):.0f}/{runs[0]['allocation']['gates']}",
                f"{min(ranks)}-{max(ranks)}",
                f"{statistics.fmean(sum(v == 0 for v in r['ranks'].values()) for r in runs):.1f}",
                *(_pct(share) for share in summary[label]),
            ]
        )
    data_driven = max(summary, key=lambda label: summary[label][2][0] - summary[label][0][0])
    figure = _figure(summary, FIGURES / "allocation_overlap.png")
    settings = glue.ALLOCATION_COMMON
    runs_text = ", ".join(f"(seed {s}, gate seed {g})" for s, g in glue.ALLOCATION_RUNS)
    return "\n".join(
        [
            "\n## Allocation: the initialisation or the data?\n",
            f"SoRA on {TASK_NAMES[glue.ALLOCATION_TASK]} ({settings['max_train_samples']} training examples, "
            f"{settings['epochs']:g} epochs at batch {settings['batch_size']}: 300 steps), at a budget of "
            f"{settings['target_ratio']:.0%} of the r_max={glue.RANK} adapter; each variant three times, {runs_text}: "
            "`--seed` sets the data order (and all else), `--gate-seed` the N(0, 1) gates alone. *Init overlap*: the "
            "share of the surviving gate entries that were among the largest initial |g| (as many as survive), mean "
            "of the three runs (`metrics.json`'s `allocation`, `sora.allocation.init_overlap`). *Gate-seed* and "
            "*data-order overlap*: the survivors two runs share, |A∩B|/√(|A|·|B|) "
            "(`sora.allocation.survivor_overlap`), for the two gate seeds and for the two data orders. Chance "
            "levels in brackets. An allocation chosen by "
            "the data has an init overlap near chance and a data-order overlap well above it (a constant init is the "
            "same for every gate seed, so its gate-seed overlap is 100% by construction). Command: "
            "`python benchmarks/glue.py allocation`.\n",
            table(
                [
                    "variant",
                    "SST-2 acc (3 runs)",
                    "survivors",
                    "ranks",
                    "empty modules",
                    "init overlap %",
                    "gate-seed overlap %",
                    "data-order overlap %",
                ],
                rows,
            ),  # fmt: skip
            "",
            f"![who chooses the surviving ranks]({rel(figure, res.out_dir)})",
            "",
            "Rank heatmaps (the first run of each): the default against the variant whose data-order overlap rises "
            "most above its init overlap.\n",
            _heatmaps(variants, [next(iter(variants)), data_driven], res.out_dir),
            "",
            "The data-chosen allocation (constant gates, contribution top-up) at both budgets on all five tasks, "
            "against the N(0, 1) default and LoRA of equal size and scale: the Equal-budget section.",
        ]
    ).rstrip()
