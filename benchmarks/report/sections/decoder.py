"""## Instruction tuning on the embedded decoder (``benchmarks/decoder.py``): SmolLM2-135M-Instruct tuned on chat
versions of SST-2, RTE and MRPC and on SST-2 text. The table of every row against the zero-shot base (per-task exact
match and loss, mean ± std over seeds), what was subsampled, the SoRA/LoRA step-time ratio, SoRA at a 50% budget
against LoRA r=4 at both scales paired by seed with the verdict on why SoRA trails (if it does), whether every method
beats the base, and the rank heatmaps of the two budgeted SoRA rows with the pattern they show."""

from __future__ import annotations

import collections
import math
import statistics
from pathlib import Path
from typing import Any

import decoder

from ..load import DECODER, RESULTS, ROOT, Results, Runs, read_json
from ..markdown import fmt_params, rank_pattern, rel, table
from ..stats import NOISE_NOTE, Tally, differences, gap_text, gap_word, mean_std, tally

FIGURES = DECODER / "figures"
TASK_NAMES = {"sst2": "SST-2", "rte": "RTE", "mrpc": "MRPC", decoder.TEXT_TASK: "SST-2 text"}
ROW_NAMES = {
    decoder.ZERO_SHOT: "base model, zero-shot",
    "lora": "LoRA r=8",
    "sora": "SoRA r_max=8",
    "adalora": "AdaLoRA r=8",
    "sora-budget50": "SoRA r_max=8, budget 0.5",
    "lora-r4": "LoRA r=4",
    "lora-r4-alpha8": "LoRA r=4, alpha 8",
    "sora-budget50-learned": "SoRA r_max=8, budget 0.5, learned allocation",
}
# SoRA at the budget (the paper's N(0, 1) gates, then the allocation the data chooses) and LoRA of that size
# (lora_alpha 16, then SoRA's scale alpha / r = 2); the verdict's five comparisons (a, b): a − b
BUDGETED, LEARNED, LORA, SCALED = "sora-budget50", "sora-budget50-learned", "lora-r4", "lora-r4-alpha8"
COMPARISONS = {
    "plain": (BUDGETED, LORA),
    "learned": (LEARNED, LORA),
    "allocation": (LEARNED, BUDGETED),
    "scale": (SCALED, LORA),
    "matched": (LEARNED, SCALED),
}


def _name(label: str) -> str:
    return ROW_NAMES.get(label, label)


def _runs_of(runs: Runs, label: str) -> list[dict[str, Any]]:
    """The runs of row ``label``, by seed."""
    return sorted((r for r in runs.values() if r["method"] == label), key=lambda r: r["seed"] or 0)


def _ms(values: list[float], digits: int) -> str:
    """Mean ± sample std (the mean alone for one value; — for none)."""
    if not values:
        return "—"
    mean, std = mean_std(values)
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def exact(task: str):
    return lambda r: 100 * r["tasks"][task]["exact_match"]


def lower_loss(task: str):
    """A run's value whose paired difference a − b is ``100 ln(loss_b / loss_a)``: about how many percent lower a's
    dev loss is than b's (positive: a better)."""
    return lambda r: -100 * math.log(r["tasks"][task]["loss"])


def results_table(runs: Runs) -> str:
    """Every row (the zero-shot base first): per-task exact match and loss, text perplexity, live ranks, adapter
    parameters and file size, each the mean ± std over the seeds."""
    rows = []
    for label in (decoder.ZERO_SHOT, *decoder.ROWS):
        got = _runs_of(runs, label)
        if not got:
            continue
        tuned = label != decoder.ZERO_SHOT
        ranks = [sum(r["ranks"].values()) for r in got] if tuned else []
        total = got[0]["hyperparameters"]["r"] * len(got[0]["ranks"]) if tuned else None
        rows.append(
            [
                _name(label),
                str(len(got)) if tuned else "—",
                *(_ms([exact(t)(r) for r in got], 1) for t in decoder.CHAT_TASKS),
                *(_ms([r["tasks"][t]["loss"] for r in got], 3) for t in decoder.CHAT_TASKS),
                _ms([r["tasks"][decoder.TEXT_TASK]["perplexity"] for r in got], 2),
                f"{_ms(ranks, 0)} / {total}" if tuned else "—",
                fmt_params(statistics.fmean(r["nonzero_params"] for r in got)) if tuned else "—",
                f"{statistics.fmean(r['adapter_bytes'] for r in got) / 2**20:.2f} MiB" if tuned else "—",
            ]
        )
    header = [
        "row",
        "seeds",
        *(f"{TASK_NAMES[t]} exact %" for t in decoder.CHAT_TASKS),
        *(f"{TASK_NAMES[t]} loss" for t in decoder.CHAT_TASKS),
        f"{TASK_NAMES[decoder.TEXT_TASK]} ppl",
        "live ranks",
        "adapter params",
        "adapter file",
    ]
    return table(header, rows)


def data_text(summary: dict[str, Any]) -> str:
    """What was subsampled, from a result's ``data`` (``decoder.build_data``'s summary and the recipe)."""
    records = summary["records"]
    counts = {split: ", ".join(f"{TASK_NAMES[t]} {n}" for t, n in records[split].items()) for split in records}
    skipped = ", ".join(f"{TASK_NAMES[t]} {n}" for t, n in summary["too_long"].items() if n) or "none"
    majority = ", ".join(
        f"{TASK_NAMES[t]} {m['answer']} {100 * m['share']:.0f}%" for t, m in summary["dev_majority"].items()
    )
    return (
        f"Data: one seeded subsample of the GLUE TSVs (seed {summary['seed']}), the same for every run. Training "
        f"records per task: {counts['train']} from the train split, mixed and shuffled into one file; validation "
        "records (held-out rows of the train split, interleaved: the Trainer's validation loss, `metrics.json`'s "
        f"`eval`): {counts['validation']}; dev records (the scores below, from the dev split): "
        f"{counts['dev']}. Chat tasks: one user turn with a one-word answer (SST-2: is the sentiment positive or "
        "negative, `positive` / `negative`; RTE: does the premise entail the hypothesis, `yes` / `no`; MRPC: do the "
        "two sentences mean the same, `yes` / `no`); SST-2 text: SST-2 sentences as plain text, from other rows "
        f"than the chat records and never a sentence of one. Skipped while drawing: SST-2 rows under "
        f"{summary['min_sst2_words']} words (the train split's phrases) and records over {summary['max_seq_length']} "
        f"tokens with the chat template (drawn rows skipped: {skipped}), so nothing is truncated. The dev records' "
        f"majority answer: {majority}."
    )


def recipe_text(runs: Runs) -> str:
    """The training recipe and how the scores are computed, with one run's command."""
    tuned = [r for r in runs.values() if r["method"] != decoder.ZERO_SHOT]
    if not tuned:
        return ""
    h = tuned[0]["hyperparameters"]
    lrs = {
        decoder.ROWS[r["method"]]["method"]: r["hyperparameters"]["lr"] for r in tuned if r["method"] in decoder.ROWS
    }
    steps = sorted({r["steps"] for r in tuned})
    command = next((r["command"] for r in tuned if r["method"] == "sora"), tuned[0]["command"])
    kept = (
        "the final model (one epoch: one checkpoint)"
        if h["epochs"] <= 1
        else "the checkpoint of the lowest validation loss (AdaLoRA and the budgeted SoRA: the final one)"
    )
    return (
        f"Every run: `sora train --task causal-lm` on the embedded decoder, {h['epochs']:g} "
        f"epoch{'s' * (h['epochs'] != 1)} at batch {h['batch_size']}, max sequence length {h['max_seq_length']} "
        f"({'/'.join(map(str, steps))} optimizer steps), each method at its default learning rate ("
        + ", ".join(f"{method} {lr:g}" for method, lr in sorted(lrs.items()))
        + ") and its other defaults but the row's settings; every method adapts every linear layer of the blocks "
        f"({len(tuned[0]['ranks'])} modules). Kept: {kept}. Then the exported adapter is loaded once and every dev "
        "file scored with the code that scores the zero-shot row (`decoder.score_tasks`): *loss* per trained token "
        "(the answer and its end-of-turn tokens; every token of a text record: `causal_lm.masked_loss`), *exact*: "
        "the greedy generation, as many tokens as the reference span, equals the answer after stripping whitespace. "
        f"An example command:\n\n```bash\n{command}\n```"
    )


def step_ratio_text(runs: Runs) -> str:
    """SoRA's step time over LoRA's (r=8 both): the ratio of their medians on the machine with most such runs."""
    by_machine: dict[tuple, dict[str, list[float]]] = collections.defaultdict(lambda: {"sora": [], "lora": []})
    for r in runs.values():
        if r["method"] in ("sora", "lora"):
            m = r["machine"]
            by_machine[(m["cpu"], m["nproc"], m["torch_threads"], m["gpu"])][r["method"]].append(r["seconds_per_step"])
    both = {k: v for k, v in by_machine.items() if v["sora"] and v["lora"]}
    if not both:
        return ""
    (cpu, nproc, threads, gpu), times = max(both.items(), key=lambda kv: len(kv[1]["sora"]) + len(kv[1]["lora"]))
    sora, lora = statistics.median(times["sora"]), statistics.median(times["lora"])
    loads = [r["loadavg_start"][0] for r in runs.values() if r["method"] in ("sora", "lora")]
    return (
        f"Step time: SoRA r_max=8 / LoRA r=8 = **{sora / lora:.2f}** (median seconds per optimizer step "
        f"{sora:.2f} over {len(times['sora'])} SoRA runs and {lora:.2f} over {len(times['lora'])} LoRA runs; "
        f"training steps only, `metrics.json`'s step time; {gpu or cpu}, {nproc} cores, {threads} torch "
        f"thread{'s' * (threads != 1)} per run, 1-minute load average {min(loads):.1f}-{max(loads):.1f} at the "
        "start: the machine was shared)."
    )


def side_by_side_text(path: Path = RESULTS / "overhead_decoder_cpu.json") -> str:
    """SoRA's step time over LoRA's on the decoder, timed interleaved in one process (benchmarks/overhead.py)."""
    if not path.is_file():
        return (
            "Not timed side by side yet: `python benchmarks/overhead.py --model smollm2 --batch-size 4 --rounds 10 "
            "--warmup 2 --threads 1 --output benchmarks/results/overhead_decoder_cpu.json`."
        )
    d = read_json(path)
    s, m, ratios, paired = d["settings"], d["machine"], d["ratios"], d["paired_ratios"]["sora_over_lora"]
    return (
        f"Timed side by side in one process (benchmarks/overhead.py `--model smollm2`, every configuration "
        f"interleaved round by round, {s['rounds']} rounds at batch {s['batch_size']} x {s['seq_len']} tokens, "
        f"{m['threads']} torch thread{'s' * (m['threads'] != 1)} on {m['nproc']} cores, 1-minute load average "
        f"{m['loadavg_start'][0]:.1f} at the start; "
        f"`{path.relative_to(ROOT).as_posix()}`, in full under Overhead): SoRA/LoRA **{ratios['sora_over_lora']:.3f}** "
        f"(median of the per-round ratios {paired['median']:.3f}, IQR {paired['iqr']:.3f}), AdaLoRA/LoRA "
        f"{ratios['adalora_over_lora']:.3f}, SoRA/AdaLoRA {ratios['sora_over_adalora']:.3f}; the gate step is "
        f"{ratios['gate_step_percent_of_sora_step']:.2g}% of a SoRA step."
    )


def _pairs(runs: Runs, a: str, b: str) -> list[tuple[dict, dict]]:
    """(run of a, run of b) for every seed both finished."""
    return [(x, y) for x in _runs_of(runs, a) if (y := runs.get(decoder.run_name(b, x["seed"])))]


def _loss_gaps(runs: Runs, a: str, b: str) -> list[list[float]]:
    """Per task, the paired differences of ``a``'s dev loss against ``b``'s (``lower_loss``); [] without pairs."""
    pairs = _pairs(runs, a, b)
    return [differences(pairs, lower_loss(t)) for t in decoder.TASKS] if pairs else []


def _behind_cells(runs: Runs) -> list[str]:
    """The dev-loss gaps of the budgeted SoRA rows against LoRA r=4 (both scales) that are behind, by task."""
    return [
        f"{_name(a)} − {_name(b)} on {TASK_NAMES[task]}"
        for a in (BUDGETED, LEARNED)
        for b in (LORA, SCALED)
        for task, diffs in zip(decoder.TASKS, _loss_gaps(runs, a, b), strict=True)
        if gap_word(diffs) == "behind"
    ]


def gap_lines(runs: Runs) -> str:
    """SoRA's two budgeted rows against LoRA r=4 at both scales, paired by seed: exact match on the chat tasks and
    the dev loss on every task."""
    lines = []
    for a in (BUDGETED, LEARNED):
        for b in (LORA, SCALED):
            pairs = _pairs(runs, a, b)
            if not pairs:
                continue
            matches = ", ".join(f"{TASK_NAMES[t]} {gap_text(differences(pairs, exact(t)))}" for t in decoder.CHAT_TASKS)
            loss = ", ".join(f"{TASK_NAMES[t]} {gap_text(differences(pairs, lower_loss(t)))}" for t in decoder.TASKS)
            lines.append(f"- {_name(a)} − {_name(b)}: exact match (points) {matches}; dev loss (% lower) {loss}")
    if not lines:
        return ""
    return (
        f"SoRA at 50% of its r_max=8 adapter against LoRA r=4 (the same size), paired by seed ({NOISE_NOTE}; "
        "dev loss % lower: 100 ln(loss of the second / loss of the first), positive when the first is better):\n\n"
        + "\n".join(lines)
    )


def verdict(runs: Runs) -> str:
    """Whether SoRA at 50% trails LoRA r=4, and if so whether the allocation (the learned one against the N(0, 1)
    one) or the scale (LoRA r=4 at alpha 8 against alpha 16) accounts for it, with both matched what is left; from
    the dev-loss gaps of every task (the finer measure: exact match on 100 prompts moves in steps of 1 point), by
    ``stats.tally``'s rule. "Not yet" until every comparison has every seed."""
    gaps = {key: _loss_gaps(runs, a, b) for key, (a, b) in COMPARISONS.items()}
    seeds = {key: len(g[0]) if g else 0 for key, g in gaps.items()}
    if min(seeds.values()) < len(decoder.SEEDS):
        have = "; ".join(f"{_name(a)} − {_name(b)}: {seeds[key]}" for key, (a, b) in COMPARISONS.items())
        return (
            f"**Verdict on why SoRA at a budget trails LoRA of its size: not yet.** It needs {len(decoder.SEEDS)} "
            f"paired seeds of each comparison; seeds so far: {have} (`{decoder.RUNNER}`)."
        )
    t: dict[str, Tally] = {key: tally(g) for key, g in gaps.items()}

    def says(key: str, rival: str) -> str:
        return t[key].says(rival)

    n = len(decoder.TASKS)
    head = (
        f"**Verdict** (dev loss on the {n} tasks, {len(decoder.SEEDS)} seeds): at 50% of its adapter, SoRA with the "
        f"paper's N(0, 1) gates {says('plain', 'LoRA r=4')}; with the learned allocation it "
        f"{says('learned', 'LoRA r=4')}."
    )
    allocation = f"the learned allocation {says('allocation', 'the N(0, 1) one at the same budget')}"
    scale = f"LoRA r=4 at alpha 8 (SoRA's scale) {says('scale', 'LoRA r=4 at alpha 16')}"
    matched = f"with both matched, SoRA (learned allocation) {says('matched', 'LoRA r=4 at alpha 8')}"
    if t["plain"].outcome in ("beats", "level"):
        behind = _behind_cells(runs)
        return (
            f"{head} **SoRA does not trail LoRA of its size here**: no gap for the allocation or the scale to explain"
            + (f" (behind on a single task: {'; '.join(behind)})." if behind else ".")
        )
    causes = [
        *(["**the allocation**"] if t["allocation"].outcome == "beats" else []),
        *(["**the scale**"] if t["scale"].outcome in ("behind", "trails") else []),
    ]
    if causes:
        return f"{head} SoRA trails because of {' and '.join(causes)} ({allocation}; {scale}); {matched}."
    return (
        f"{head} **Neither the allocation nor the scale accounts for it** ({allocation}; {scale}); {matched}: what "
        "is left is the training (the gates and their proximal step)."
    )


def base_text(runs: Runs) -> str:
    """Whether every tuned run beats the zero-shot base on every task: lower dev loss, higher exact match."""
    base = runs.get(decoder.ZERO_SHOT)
    tuned = [r for r in runs.values() if r["method"] != decoder.ZERO_SHOT]
    if base is None or not tuned:
        return ""
    checks = {
        "a lower dev loss on every task": [
            (r, t) for r in tuned for t in decoder.TASKS if r["tasks"][t]["loss"] >= base["tasks"][t]["loss"]
        ],
        "a higher exact match on every chat task": [
            (r, t) for r in tuned for t in decoder.CHAT_TASKS if exact(t)(r) <= exact(t)(base)
        ],
    }
    parts = []
    for what, misses in checks.items():
        if not misses:
            parts.append(f"{what}: **yes**")
            continue
        listed = ", ".join(f"{_name(r['method'])} seed {r['seed']} on {TASK_NAMES[t]}" for r, t in misses[:6])
        more = f" and {len(misses) - 6} more" if len(misses) > 6 else ""
        parts.append(f"{what}: **no**, {len(misses)} run-task pairs do not ({listed}{more})")
    methods = len({r["method"] for r in tuned})
    return (
        f"Does every method beat the zero-shot base in every seed ({methods} method{'s' * (methods != 1)}, "
        f"{len(tuned)} run{'s' * (len(tuned) != 1)})? With " + "; with ".join(parts) + "."
    )


def answers_text(runs: Runs) -> str:
    """The zero-shot base's most frequent generations per chat task: why its exact match is what it is."""
    base = runs.get(decoder.ZERO_SHOT)
    if base is None:
        return ""
    listed = "; ".join(
        f"{TASK_NAMES[t]} "
        + ", ".join(f"`{a.replace(chr(10), ' ')}` {n}" for a, n in base["tasks"][t]["answers"].items())
        for t in decoder.CHAT_TASKS
    )
    return (
        "The zero-shot base's most frequent generations (exact match counts the one-word answer alone, case and "
        f"punctuation included): {listed}."
    )


def majority_text(runs: Runs, margin: float = 5.0) -> str:
    """The tuned runs' exact match per chat task against always giving the dev records' majority answer: whether a
    run learned the task or the answer's form alone (``margin``: percentage points that count as above it)."""
    tuned = [r for r in runs.values() if r["method"] != decoder.ZERO_SHOT]
    if not tuned:
        return ""
    parts, unlearned = [], []
    for t in decoder.CHAT_TASKS:
        majority = tuned[0]["data"]["dev_majority"][t]
        share, matches = 100 * majority["share"], [exact(t)(r) for r in tuned]
        above = sum(e >= share + margin for e in matches)
        how = "every run" if above == len(matches) else "no run" if not above else f"{above} of {len(matches)} runs"
        unlearned += [TASK_NAMES[t]] if not above else []
        span = "-".join(dict.fromkeys(f"{e:.0f}" for e in (min(matches), max(matches))))
        parts.append(
            f"{TASK_NAMES[t]} {span}% against `{majority['answer']}` {share:.0f}% ({how} {margin:g}+ points above it)"
        )
    text = "Against always giving the dev records' majority answer, the tuned runs' exact match: " + "; ".join(parts)
    if unlearned:
        text += (
            f". On {' and '.join(unlearned)} the gain over the zero-shot base is the answer's form (one word), not "
            "the task: no method learns it with this recipe at this model size"
        )
    return text + "."


def heatmaps(runs: Runs, out_dir: Path, figures: Path) -> str:
    """The rank heatmaps of the first run of each budgeted SoRA row side by side (drawn to ``figures``), and the
    pattern each shows."""
    from sora.analysis import plot_rank_heatmap

    firsts = [got[0] for label in (BUDGETED, LEARNED) if (got := _runs_of(runs, label))]
    if not firsts:
        return ""
    cells, names = [], []
    for r in firsts:
        name = f"{_name(r['method'])}, seed {r['seed']}"
        r_max = r["hyperparameters"]["r"]
        path = figures / f"ranks_{decoder.run_name(r['method'], r['seed'])}.png"
        live = sum(r["ranks"].values())
        plot_rank_heatmap(r["ranks"], r_max, path, title=f"{name}: {live}/{r_max * len(r['ranks'])} ranks live")
        cells.append(f"![{name}]({rel(path, out_dir)})")
        names.append(name)
    return (
        "Rank heatmaps (layers × module types, `sora.analysis.plot_rank_heatmap`) of the first run of each budgeted "
        "SoRA row:\n\n"
        + table(names, [cells], "l" * len(names))
        + "\n\n"
        + " ".join(rank_pattern(name, r["ranks"]) for name, r in zip(names, firsts, strict=True))
    )


def decoder_section(runs: Runs, failed: Runs, out_dir: Path, figures: Path = FIGURES) -> str:
    """The section's body from the results (``runs``, ``failed``: by run name), links relative to ``out_dir``."""
    if not runs:
        return f"Not measured: `{decoder.RUNNER}`."
    parts = [
        data_text(next(iter(runs.values()))["data"]),
        recipe_text(runs),
        results_table(runs)
        + "\n\nCells: mean ± std over the seeds (exact match in %, loss in nats per trained token); live ranks of "
        "the r_max=8 (LoRA r=4: r=4) adapter; adapter params: its nonzero parameters; adapter file: "
        "`adapter_model.safetensors`.",
        base_text(runs),
        answers_text(runs),
        majority_text(runs),
        step_ratio_text(runs),
        side_by_side_text(),
        gap_lines(runs),
        verdict(runs),
        heatmaps(runs, out_dir, figures),
    ]
    if failed:
        parts.append(
            f"Failed runs ({len(failed)}, under `benchmarks/results/decoder/failed/`): "
            + "; ".join(f"{name}: {r['error']}" for name, r in failed.items())
        )
    return "\n\n".join(p for p in parts if p)


def render(res: Results) -> str:
    return "\n".join(
        [
            "\n## Instruction tuning on the embedded decoder (SmolLM2-135M-Instruct)\n",
            decoder_section(res.decoder, res.decoder_failed, res.out_dir),
        ]
    )
