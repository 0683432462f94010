"""## Allocation: who chooses the surviving ranks, the gates' initialisation or the data? (``glue.py allocation``)

Per variant, with two gate seeds and the same data: the survivors' share among the largest initial ``|g|`` against
its chance level (``metrics.json``'s ``allocation``), the survivors the two gate seeds share against chance
(``sora.allocation.survivor_overlap`` of the results' ``survivors``), the dev score; a bar figure of the two shares,
and the rank heatmaps of the first and the last variant side by side."""

from __future__ import annotations

import statistics
from pathlib import Path

import glue

from ..load import FIGURES, Results, Runs, score
from ..markdown import rel, table

LABELS = {
    "sora-randn": "N(0, 1) gates (default)",
    "sora-const": "constant gates 1.0",
    "sora-randn-gatelr": "N(0, 1) gates, gate lr 1e-2",
    "sora-const-gatelr": "constant gates 1.0, gate lr 1e-2",
    "sora-randn-contribution": "N(0, 1) gates, top-up by |g|·|B|·|A|",
    "sora-const-contribution": "constant gates 1.0, top-up by |g|·|B|·|A|",
}


def _runs(results: Runs) -> dict[str, list[dict]]:
    """The runs of each variant of glue.ALLOCATION, by gate seed (only the variants with every gate seed)."""
    out = {}
    for label, _ in glue.ALLOCATION:
        runs = [
            results.get(glue.run_name(glue.ALLOCATION_TASK, label, glue.RANK, 0, f"gateseed{seed}"))
            for seed in glue.ALLOCATION_GATE_SEEDS
        ]
        if all(runs):
            out[label] = runs
    return out


def _pair_overlap(runs: list[dict]) -> dict[str, float]:
    import torch

    from sora.allocation import survivor_overlap

    n = runs[0]["allocation"]["gates"]
    a, b = (torch.zeros(n).index_fill_(0, torch.tensor(r["survivors"], dtype=torch.long), 1.0) for r in runs[:2])
    return survivor_overlap(a, b)


def _figure(rows: list[tuple[str, float, float, float, float]], path: Path) -> Path:
    """Grouped bars per variant: init overlap and its chance, two-seed overlap and its chance (percent)."""
    import matplotlib.pyplot as plt
    import numpy as np

    from sora.analysis import DPI, FIG_HEIGHT, FIG_WIDTH

    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(FIG_WIDTH, FIG_HEIGHT))
    bars = (
        ("survivors among the largest initial |g|", 1, "tab:red", None),
        ("  its chance level", 2, "tab:red", "//"),
        ("survivors shared by two gate seeds", 3, "tab:blue", None),
        ("  its chance level", 4, "tab:blue", "//"),
    )
    for k, (name, column, color, hatch) in enumerate(bars):
        values = [100 * row[column] for row in rows]
        ax.bar(x + (k - 1.5) * 0.2, values, 0.2, label=name, color=color, alpha=0.45 if hatch else 0.9, hatch=hatch)
    ax.set_xticks(x, [LABELS.get(row[0], row[0]).replace(", ", ",\n") for row in rows], fontsize=8)
    ax.set_ylabel("% of the surviving gate entries")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(f"{glue.ALLOCATION_TASK.upper()}: who chooses SoRA's surviving ranks (mean over gate seeds)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _heatmaps(variants: dict[str, list[dict]], out_dir: Path) -> str:
    """The rank heatmaps of the first and the last variant (gate seed 1), side by side."""
    from sora.analysis import plot_rank_heatmap

    cells = []
    for label in (next(iter(variants)), list(variants)[-1]):
        run = variants[label][0]
        path = FIGURES / f"ranks_allocation_{label}.png"
        plot_rank_heatmap(run["ranks"], glue.RANK, path, title=f"{LABELS.get(label, label)}: ranks")
        cells.append(f"![{LABELS.get(label, label)}]({rel(path, out_dir)})")
    return table([LABELS.get(label, label) for label in (next(iter(variants)), list(variants)[-1])], [cells], "ll")


def render(res: Results) -> str:
    variants = _runs(res.allocation)
    if not variants:
        return ""
    rows, summary = [], []
    for label, runs in variants.items():
        pair = _pair_overlap(runs)
        init = statistics.fmean(r["allocation"]["overlap"] for r in runs)
        chance = statistics.fmean(r["allocation"]["chance"] for r in runs)
        summary.append((label, init, chance, pair["overlap"], pair["chance"]))
        for seed, r in zip(glue.ALLOCATION_GATE_SEEDS, runs, strict=True):
            a = r["allocation"]
            rows.append(
                [
                    LABELS.get(label, label),
                    str(seed),
                    f"{score(r):.1f}",
                    f"{a['survivors']}/{a['gates']}",
                    f"{100 * a['overlap']:.1f} ({100 * a['chance']:.1f})",
                    f"{100 * pair['overlap']:.1f} ({100 * pair['chance']:.1f})" if seed == 1 else "",
                ]
            )
    figure = _figure(summary, FIGURES / "allocation_overlap.png")
    settings = glue.ALLOCATION_COMMON
    return "\n".join(
        [
            "\n## Allocation: the initialisation or the data?\n",
            f"SoRA on {glue.ALLOCATION_TASK.upper()} ({settings['max_train_samples']} training examples, "
            f"{settings['epochs']:g} epochs at batch {settings['batch_size']}: 300 steps), at a budget of "
            f"{settings['target_ratio']:.0%} of the r_max={glue.RANK} adapter, every variant twice: with gate seeds "
            f"{' and '.join(map(str, glue.ALLOCATION_GATE_SEEDS))} (`--gate-seed`) and the same data in the same "
            "order (`--seed 0`). *Init overlap*: the share of the surviving gate entries that were among the "
            "largest initial |g| (the survivors' number of them), chance in brackets (`metrics.json`'s "
            "`allocation`, `sora.allocation.init_overlap`). *Two-seed overlap*: the survivors the two runs share, "
            "|A∩B|/√(|A|·|B|), chance in brackets (`sora.allocation.survivor_overlap`). Near-chance init overlap "
            "and a two-seed overlap well above chance: the data chose the ranks. Command: "
            "`python benchmarks/glue.py allocation`.\n",
            table(["variant", "gate seed", "SST-2 acc", "survivors", "init overlap %", "two-seed overlap %"], rows),
            "",
            f"![who chooses the surviving ranks]({rel(figure, res.out_dir)})",
            "",
            _heatmaps(variants, res.out_dir),
        ]
    )
