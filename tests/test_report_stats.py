"""benchmarks/report/stats.py (paired gaps, Student-t intervals, the verdict rule) on hand-computed cases, the
Equal-budget verdict that reads them, the Machine section's reading of the machines the results record, and the
benchmark runners' ``--stop-at``."""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import math

import pytest
import scipy.stats
from conftest import load_benchmark

load_benchmark("build_report")  # puts benchmarks/ on sys.path, as running the script does

import glue  # noqa: E402
import runner  # noqa: E402
from report import stats  # noqa: E402
from report.load import Machine  # noqa: E402
from report.markdown import TASK_NAMES, rank_pattern  # noqa: E402
from report.sections import defaults, equal, front, machine  # noqa: E402

AHEAD, WITHIN, BEHIND = [2.0, 3.0, 4.0], [1.0, 2.0, 3.0], [-4.0, -3.0, -2.0]


def test_mean_std():
    assert stats.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    mean, std = stats.mean_std([4.0])
    assert mean == 4.0 and math.isnan(std)


def test_differences_pair_by_value():
    runs = [({"s": 70.0}, {"s": 68.5}), ({"s": 60.0}, {"s": 61.0})]
    assert stats.differences(runs, lambda r: r["s"]) == [1.5, -1.0]


def test_half_width_is_student_t():
    # 3 seeds, sample std 1: t(0.975, 2) = 4.3027 standard errors of 1 / sqrt(3)
    assert scipy.stats.t.ppf(0.975, 2) == pytest.approx(4.302652729911275)
    assert stats.half_width(WITHIN) == pytest.approx(4.302652729911275 / math.sqrt(3))
    assert stats.half_width(WITHIN) == pytest.approx(2.4841, abs=1e-4)
    # 2 seeds: t(0.975, 1) = 12.7062, std 0.7071, n 2 -> 12.7062 * 0.5
    assert stats.half_width([0.5, 1.5]) == pytest.approx(12.706204736174698 * 0.5)
    # the width does not depend on the mean
    assert stats.half_width([x + 10 for x in WITHIN]) == pytest.approx(stats.half_width(WITHIN))


def test_gap_word():
    assert stats.gap_word(WITHIN) == "within noise"  # mean 2 <= 2.48
    assert stats.gap_word(AHEAD) == "ahead"  # mean 3 > 2.48
    assert stats.gap_word(BEHIND) == "behind"
    assert stats.gap_word([5.0]) == "one seed only"
    assert stats.gap_word([0.0, 0.0, 0.0]) == "within noise"


def test_gap_text():
    assert stats.gap_text(WITHIN) == "+2.0 ± 2.5 (within noise, 3 seeds)"
    assert stats.gap_text(BEHIND) == "-3.0 ± 2.5 (behind, 3 seeds)"
    assert stats.gap_text([1.5]) == "+1.5 (1 seed: no noise estimate)"


def test_tally_counts():
    t = stats.tally([AHEAD, WITHIN, BEHIND, [-1.0, 0.0, 0.5], [-2.0]])
    assert t == stats.Tally(comparisons=5, ahead=1, within=2, behind=1, below=3)


@pytest.mark.parametrize(
    ("diffs", "outcome"),
    [
        ([AHEAD, AHEAD, WITHIN], "beats"),  # more than half ahead, none behind
        ([AHEAD, AHEAD, AHEAD, BEHIND], "level"),  # one behind: no win, and not every mean below
        ([AHEAD, AHEAD, WITHIN, WITHIN], "level"),  # half ahead is not more than half
        ([BEHIND, BEHIND, AHEAD], "behind"),  # more than half behind
        ([BEHIND, [-1.0, -0.5, 0.2], [-0.1, -0.2, 0.1]], "trails"),  # every mean below, most within noise
        ([WITHIN, [-1.0, -0.5, 0.2]], "level"),
    ],
)
def test_verdict_rule(diffs, outcome):
    assert stats.tally(diffs).outcome == outcome


CLAIM = "**Verdict on the paper's claim (SoRA beats LoRA and AdaLoRA with fewer parameters)"


def test_equal_budget_verdict_on_constructed_gaps():
    below = [-1.0, -0.5, 0.2]
    gaps = {"sora-budget50": {"lora": [below, BEHIND, below, below], "adalora": [AHEAD, WITHIN]}}
    text = equal.verdict(gaps, ["sora-budget50"], [], "the paper's N(0, 1) gates")
    assert text.startswith(f"{CLAIM}, the paper's N(0, 1) gates: not reproduced here.**")
    assert (
        "Against LoRA (4 task comparisons) SoRA is ahead in 0, within noise in 3 and behind in 1 (mean below LoRA's "
        "in 4); against AdaLoRA (2 task comparisons) SoRA is ahead in 1, within noise in 1 and behind in 0 (mean "
        "below AdaLoRA's in 0)." in text
    )
    assert (
        "At 50% of LoRA r=8's parameters, SoRA trails LoRA (every mean below, most gaps within noise) and is level "
        "with AdaLoRA within noise." in text
    )
    held = equal.verdict(
        {"sora-budget50": {"lora": [AHEAD, AHEAD], "adalora": [AHEAD, AHEAD, WITHIN]}}, ["sora-budget50"], [], "x"
    )
    assert "holds here.**" in held and "SoRA beats LoRA and beats AdaLoRA." in held


def test_equal_budget_verdict_waits_for_seeds():
    """A budget short of seeds: no verdict of its own, and named beside the verdict of a complete one."""
    waiting = "the budget 0.7 has fewer than 3 seeds of every comparison on every task yet"
    short = {"sora-budget70": {"lora": [AHEAD, [1.0]]}}
    text = equal.verdict(short, [], ["sora-budget70"], "the learned allocation")
    assert text.startswith(f"{CLAIM}, the learned allocation: not yet.**")
    assert "Of the task comparisons above, ahead in 1, one seed only in 1;" in text
    assert f"{waiting}: `python benchmarks/glue.py equal`." in text
    both = {**short, "sora-budget50": {"lora": [AHEAD, AHEAD], "adalora": [AHEAD, AHEAD, WITHIN]}}
    text = equal.verdict(both, ["sora-budget50"], ["sora-budget70"], "the learned allocation")
    assert "holds here.**" in text and "At 50% of LoRA r=8's parameters" in text
    assert "(The budget 0.7 has fewer than 3 seeds" in text


def test_machine_line_comes_from_the_results():
    xeon = Machine(2, "Intel(R) Xeon(R) Processor", None, "2.13.0+cpu", "5.24.0", "3.11.7")
    one = machine.machine_text(collections.Counter({xeon: 5}), [0.2, 5.93])
    assert one == (
        "2 CPU cores (Intel(R) Xeon(R) Processor), shared with other developers' jobs (1-minute load average 0.2-5.9 "
        "at the start of the runs), no GPU; torch 2.13.0+cpu, transformers 5.24.0, Python 3.11.7."
    )
    gpu = Machine(16, "AMD EPYC", "NVIDIA H100", "2.13.0+cu128", "5.24.0", "3.11.7")
    two = machine.machine_text(collections.Counter({xeon: 5, gpu: 7}), [1.0])
    assert two.startswith("The GLUE result files record 2 machines: 16 CPU cores (AMD EPYC), GPU NVIDIA H100; ")
    assert "(7 result files); 2 CPU cores (Intel(R) Xeon(R) Processor), no GPU; " in two
    assert two.endswith("(5 result files). The machines were shared with other developers' jobs (1-minute load "
                        "average 1.0-1.0 at the start of the runs).")  # fmt: skip


def _run(task: str, method: str, r: int, seed: int, score: float) -> tuple[str, dict]:
    result = {"task": task, "method": method, "seed": seed, "hyperparameters": {"r": r}}
    return glue.run_name(task, method, r, seed), {**result, "eval": {"m": score / 100}, "primary_metric": "m"}


def test_factors_name_each_factor_by_its_paired_gaps():
    """Allocation (learned vs N(0, 1) at 50%), scale (LoRA r=4 alpha 8 vs 16) and training (learned vs LoRA alpha 8),
    on runs built so that the learned allocation is 3 points ahead, the scale changes nothing and LoRA alpha 8 is 3
    points ahead of the learned SoRA: each line and the closing sentence say so."""
    offsets = {"sora-budget50": 0.0, "sora-budget50-const-contribution": 3.0, "lora": 6.0, "lora-alpha8": 6.0}
    ranks = {"sora-budget50": 8, "sora-budget50-const-contribution": 8, "lora": 4, "lora-alpha8": 4}
    runs = dict(
        # LoRA alpha 16's seed 0 is 0.3 above alpha 8 on every other task, 0.3 below on the rest: noise
        _run(task, method, ranks[method], seed, 70 + offset + 0.3 * (-1) ** i * (method == "lora" and seed == 0))
        for i, task in enumerate(glue.DEFAULTS_SAMPLES)
        for method, offset in offsets.items()
        for seed in glue.SEEDS
    )
    text = equal.factors(runs)
    lines = {line.split("**")[1]: line for line in text.splitlines() if line.startswith("- **")}
    assert set(lines) == {"Allocation", "Scale", "Training (allocation learned, size and scale matched)"}
    assert "+3.0 ± 0.0 (ahead, 3 seeds)" in lines["Allocation"] and "ahead in 5," in lines["Allocation"]
    assert "within noise in 5" in lines["Scale"]
    assert "-3.0 ± 0.0 (behind, 3 seeds)" in lines["Training (allocation learned, size and scale matched)"]
    closing = text.split("**Allocation, scale, training**, where every task has every seed: ")[1]
    assert closing.startswith("allocation: ") and "beats" in closing.split(";")[0]
    assert "scale: " in closing and "is level with" in closing.split(";")[1]
    assert "training: " in closing and "is behind" in closing.split(";")[2]


def test_factors_wait_for_runs():
    assert equal.factors({}) == ""


def test_rank_pattern_names_types_by_their_shortest_unique_suffix():
    """MiniLM's three `dense` types keep enough of their names to stay apart; the means per type and per third of
    the depth are those of the ranks given."""
    types = {"attention.self.query": 2, "attention.output.dense": 4, "intermediate.dense": 8, "output.dense": 0}
    ranks = {f"bert.encoder.layer.{i}.{mtype}": rank + (i == 2) for i in range(3) for mtype, rank in types.items()}
    text = rank_pattern("x", ranks)
    assert text.startswith(
        "x: mean live rank per module type query 2.3, attention.output.dense 4.3, intermediate.dense 8.3, "
        "output.dense 0.3 (most in intermediate.dense, least in output.dense); per third of the depth: "
    )
    assert text.endswith("layers 0-0 3.5, layers 1-1 3.5, layers 2-2 4.5.")


def test_stop_at_is_the_next_such_time():
    """``--stop-at HH:MM`` is the next time the UTC clock shows HH:MM: a time already past today means tomorrow's,
    so a session that starts before midnight can stop after it."""
    parser = argparse.ArgumentParser()
    runner.add_runner_options(parser, "scratch")
    now = dt.datetime.now(dt.UTC)
    for minutes in (-60, 60):
        wanted = now + dt.timedelta(minutes=minutes)
        stop = parser.parse_args(["--stop-at", wanted.strftime("%H:%M")]).stop_at
        assert now < stop <= now + dt.timedelta(days=1)
        assert (stop.hour, stop.minute) == (wanted.hour, wanted.minute)


def test_front_pairs_each_schedule_stage_with_lora_of_its_size(tmp_path):
    """The front section on built runs: SST-2, 3 seeds; the schedule's stages score 1 point under LoRA of their size
    at 75% and 50% (seed-to-seed noise 0.1) and 5 points under at 25% and 12.5%: within noise is not what they are,
    behind is; the time ratio divides the schedule's stage seconds by the sweep's step time."""
    runs, schedules = {}, {}
    lora = {8: 90.0, 6: 90.0, 4: 89.0, 2: 88.0, 1: 87.0}
    for seed in glue.SEEDS:
        for r, value in lora.items():
            name, result = _run("sst2", "lora", r, seed, value + 0.1 * seed)
            runs[name] = {**result, "nonzero_params": 41472 * r, "seconds_per_epoch": 100.0,
                          "hyperparameters": {"r": r, "epochs": 3.0}}  # fmt: skip
        stages = [
            {"nonzero_params": 41472 * round(8 * t), "seconds": 150.0,
             "dev": {"m": (lora[round(8 * t)] + 0.1 * seed - (1.0 if t >= 0.5 else 5.0) + 0.01 * seed) / 100}}
            for t in glue.FRONT_TARGETS
        ]  # fmt: skip
        name = glue.run_name("sst2", front.SCHEDULE, glue.RANK, seed)
        schedules[name] = {"task": "sst2", "primary_metric": "m", "stages": stages, "epochs_per_stage": 1.0,
                           "command": "sora schedule ..."}  # fmt: skip
    text, verdicts = front.front_section(runs, schedules, tmp_path, figures=tmp_path)
    assert (tmp_path / "front_sst2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert verdicts == [
        "- SST-2: behind at 75% -1.0 ± 0.0, 50% -1.0 ± 0.0, 25% -5.0 ± 0.0, 12.5% -5.0 ± 0.0.",
        "- The mean gap over the tasks (each task's mean over its seeds): 75% -1.0 (1 task), 50% -1.0 (1 task), "
        "25% -5.0 (1 task), 12.5% -5.0 (1 task).",
    ]
    row = next(line for line in text.splitlines() if line.startswith("| 25% (LoRA r=2)"))
    assert row.replace(" ", "").split("|")[2:5] == ["82.9K", "83.0,83.1,83.2", "88.0,88.1,88.2"], row
    assert "4 epochs against 12 (0.33 of the optimizer steps); measured time 0.50, 0.50, 0.50" in text
    # the size each curve picks, the smallest within 1 point of its best: the stages 89, 88, 83, 82; LoRA 90, 89, 88, 87
    assert "seed 0: the schedule 50% (88.0), the sweep r=4 (89.0)" in text


def test_front_sets_each_other_method_against_lora_of_each_stage_size(tmp_path):
    """AdaLoRA, EVA and SoRA single budgets, each against LoRA of a stage's size, paired by seed: AdaLoRA 2 points
    under LoRA at every rank, EVA level where it ran (r=4, 2, 1; it has no r=6), the single budgets only at 50% and
    below (their labels); a method with no run of a size gets "—". The verdict gives each method's mean gap."""
    runs, schedules = {}, {}
    for seed in glue.SEEDS:
        for method, r, value in (
            *(("lora", r, 88.0) for r in (8, 6, 4, 2, 1)),
            *(("adalora", r, 86.0) for r in (6, 4, 2, 1)),
            *(("eva", r, 88.0) for r in (4, 2, 1)),
            ("sora-budget50-const-contribution", glue.RANK, 87.0),
            ("sora-budget25-const-contribution", glue.RANK, 89.0),
        ):
            name, result = _run("mrpc", method, r, seed, value + 0.1 * seed + (0.01 * seed if method != "lora" else 0))
            runs[name] = {**result, "nonzero_params": 41472 * r, "seconds_per_epoch": 1.0,
                          "hyperparameters": {"r": r, "epochs": 3.0}}  # fmt: skip
        stages = [
            {"nonzero_params": 41472 * round(8 * t), "seconds": 1.0, "dev": {"m": 0.88}} for t in glue.FRONT_TARGETS
        ]
        schedules[glue.run_name("mrpc", front.SCHEDULE, glue.RANK, seed)] = {
            "task": "mrpc", "primary_metric": "m", "stages": stages, "epochs_per_stage": 1.0, "command": "c",
        }  # fmt: skip
    text, verdicts = front.front_section(runs, schedules, tmp_path, figures=tmp_path)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[6:9]] for line in text.splitlines()
            if line.startswith("| ") and "%" in line}  # fmt: skip
    assert rows["75% (LoRA r=6)"][1:] == ["—", "—"], rows
    assert rows["50% (LoRA r=4)"] == [
        "-2.0 ± 0.0 (behind, 3 seeds)", "+0.0 ± 0.0 (within noise, 3 seeds)", "-1.0 ± 0.0 (behind, 3 seeds)"
    ], rows  # fmt: skip
    assert rows["12.5% (LoRA r=1)"][2] == "—", rows
    assert verdicts[-3:] == [
        "- AdaLoRA against LoRA of each size, the mean gap over the tasks: "
        "75% -2.0 (1 task), 50% -2.0 (1 task), 25% -2.0 (1 task), 12.5% -2.0 (1 task).",
        "- EVA against LoRA of each size, the mean gap over the tasks: 50% +0.0 (1 task), 25% +0.0 (1 task), "
        "12.5% +0.0 (1 task).",
        "- SoRA single budget against LoRA of each size, the mean gap over the tasks: 50% -1.0 (1 task), "
        "25% +1.0 (1 task).",
    ]


def test_the_reach_phrase_sorts_sizes_by_their_verdict():
    reach = [("75%", BEHIND), ("50%", WITHIN), ("25%", AHEAD), ("12.5%", [1.5])]
    assert front._reach_text(front._TaskFront("sst2", {}, reach=reach)) == (
        "ahead at 25% +3.0 ± 2.5; within noise at 50% +2.0 ± 2.5; behind at 75% -3.0 ± 2.5; "
        "one seed so far at 12.5% +1.5"
    )
    assert front._reach_text(front._TaskFront("sst2", {})) == "no paired LoRA run yet"


def test_the_rivals_clause_names_methods_never_ahead_and_where_the_others_are():
    """AdaLoRA and EVA never ahead of LoRA (within noise, behind): named together; SoRA single budget ahead at one
    size of one task: named there with its gap; a one-seed gap counts for neither; nothing with 2 seeds: said so."""
    fronts = [
        front._TaskFront("sst2", {}, rivals={"AdaLoRA": [("50%", WITHIN)], "SoRA single budget": [("25%", AHEAD)]}),
        front._TaskFront("mrpc", {}, rivals={"EVA": [("50%", BEHIND), ("25%", [3.0])], "AdaLoRA": [("25%", BEHIND)]}),
    ]
    assert front._rivals_text(fronts) == (
        "AdaLoRA and EVA beat a uniform LoRA of the same size at no size on any task; "
        "SoRA single budget is ahead at SST-2 25% +3.0 ± 2.5 (ahead, 3 seeds)"
    )
    one_seed = [front._TaskFront("sst2", {}, rivals={"EVA": [("50%", [3.0])]})]
    assert front._rivals_text(one_seed) == "no other method has 2 seeds at a schedule's size yet"


def test_pattern_rows_pair_each_rank_pattern_with_uniform_lora_of_its_seed():
    """LoRA at SoRA's ranks 1 point above uniform LoRA r=4 at every seed (noise 0): ahead; EVA's pattern has not run,
    so it has no row; SoRA's own 50% run is shown against the same uniform runs; README's clause quotes the patterns'
    gaps alone. Nothing before a pattern run."""
    runs = {}
    for seed in glue.SEEDS:
        for label, r, value in (("lora", 4, 85.0), ("lora-ranks-sora50", 4, 86.0),
                                ("sora-budget50-const-contribution", glue.RANK, 84.0)):  # fmt: skip
            name, result = _run("mrpc", label, r, seed, value + 0.5 * seed)
            runs[name] = {**result, "nonzero_params": 165888}
    text = front.pattern_section(runs)
    rows = {line.split("|")[2].strip(): line.replace(" ", "").split("|")[3:6] for line in text.splitlines()[2:]}
    assert rows == {
        "uniform LoRA r=4": ["165.9K", "85.5±0.5", "—"],
        "LoRA at the ranks of SoRA's learned 50% run": ["165.9K", "86.5±0.5", "+1.0±0.0(ahead,3seeds)"],
        "SoRA at 50%, its own training": ["165.9K", "84.5±0.5", "-1.0±0.0(behind,3seeds)"],
    }, text
    assert front._pattern_text(runs) == (
        " Retrained as a plain LoRA at the per-module ranks another run found (`--rank-pattern-from`), against uniform "
        "LoRA r=4 of the same seed: at the ranks of SoRA's learned 50% run, MRPC +1.0 ± 0.0 (ahead, 3 seeds)."
    )
    without = {n: r for n, r in runs.items() if "ranks" not in n}
    assert front.pattern_section(without) is None and front._pattern_text(without) == ""


def test_readme_front_block_is_the_one_the_results_give():
    """README.md's front paragraph is what build_report writes from the committed results (rerun it after a run),
    and rewriting it replaces the marked block alone."""
    from report.build import README, readme_with
    from report.load import read

    text = README.read_text(encoding="utf-8")
    block = front.readme_block(read(README.parent))
    assert block is not None and readme_with(text, block) == text, "README's front block is stale: run build_report"
    begin, end = front.README_MARKERS
    assert readme_with(f"a\n{begin}\nold\n{end}\nb", "new") == "a\nnew\nb"


def test_an_lr_search_at_its_own_rank_shows_the_previous_default_run_first():
    """EVA's search runs at r=2 (``glue.LR_SEARCH``): its trials are found at that rank, named with it, sorted by
    rate, and the run at the previous default rate (the front's, same task, rank and seed 0) comes first."""
    tasks, lrs, r = glue.LR_SEARCH["eva"]
    results = {}
    for k, lr in enumerate(lrs):
        _, result = _run(tasks[0], "eva", r, 0, 70.0 + k)
        results[glue.run_name(tasks[0], "eva", r, 0, k)] = {**result, "hyperparameters": {"r": r, "lr": lr}}
    name, old = _run(tasks[0], "eva", r, 0, 68.4)
    previous = {name: {**old, "hyperparameters": {"r": r, "lr": 1e-3}}}
    text = defaults.lrsearch_text(results, previous, {task: 75.0 for task in glue.TASKS})
    trials = ", ".join(f"lr {lr:g} {70.0 + k:.1f}" for k, lr in sorted(enumerate(lrs), key=lambda x: x[1]))
    assert f"EVA r={r} on {TASK_NAMES[tasks[0]]}: lr 0.001 68.4 (the previous default), {trials} (bar 75)" in text, text
