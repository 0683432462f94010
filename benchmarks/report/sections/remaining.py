"""## What remains: the runs of every experiment not run yet, with the command that runs them, and what was not done."""

from __future__ import annotations

import decoder
import glue

from ..load import Results, load
from ..markdown import METHOD_NAMES


def render(res: Results) -> str:
    todo = ["\n## What remains\n"]
    seeds = (0, 1, 2)
    missing = [
        n
        for s in seeds
        for t in glue.TASKS
        for m in glue.METHODS
        if (n := glue.run_name(t, m, glue.RANK, s)) not in res.t1_all
    ]
    if missing:
        todo.append(f"- Table 1: {len(missing)} of {len(seeds) * len(glue.TASKS) * len(glue.METHODS)} runs not run "
                    f"(e.g. {', '.join(missing[:4])}): `python benchmarks/glue.py table1 --seeds 0 1 2`")  # fmt: skip
    long_jobs = [(t, m, s) for group in glue.LONG_METHODS for s in seeds for t in glue.LONG_SAMPLES for m in group]
    long_missing = [(t, m, s) for t, m, s in long_jobs if glue.run_name(t, m, glue.RANK, s) not in res.long_all]
    if long_missing:
        methods = ", ".join(METHOD_NAMES[m] for m in glue.METHODS if m in {m for _, m, _ in long_missing})
        todo.append(f"- Longer runs: {len(long_missing)} of {len(long_jobs)} runs not run ({methods}): "
                    "`python benchmarks/glue.py long --seeds 0 1 2`")  # fmt: skip
    n2 = 2 * len(glue.RANKS) * len(glue.TABLE2_TASKS)
    if len(res.t2) < n2:
        todo.append(f"- Table 2: {n2 - len(res.t2)} of {n2} runs not run: `python benchmarks/glue.py table2`")
    if len(res.speed) < glue.SPEED_ROUNDS * len(glue.SPEED_METHODS):
        have = len(res.speed) // len(glue.SPEED_METHODS)
        todo.append(
            f"- Table 4: the set shown has {have} rounds, the runner asks for {glue.SPEED_ROUNDS}: "
            "`python benchmarks/glue.py speed` (it replaces the set only once all rounds are done)"
        )
    n_sched = len(glue.SCHEDULE_TASKS) + len(glue.SCHEDULE_EXTRA) + len(glue.SCHEDULE_DEFAULT_TASKS)
    if len(res.schedules) < n_sched:
        todo.append(f"- Figure 3: {n_sched - len(res.schedules)} of {n_sched} schedules not run: "
                    "`python benchmarks/glue.py schedule`")  # fmt: skip
    jobs = [glue.run_name(t, m, glue.RANK, s) for s in seeds for t in glue.DEFAULTS_SAMPLES
            for m in glue.DEFAULTS_METHODS]  # fmt: skip
    if missing := [n for n in jobs if n not in res.defaults]:
        todo.append(f"- Defaults table: {len(missing)} of {len(jobs)} runs not run (e.g. {', '.join(missing[:3])}): "
                    "`python benchmarks/glue.py defaults`, or all of it on a lent GPU in one call: "
                    "`benchmarks/gpu_defaults.sh`")  # fmt: skip
    equal_jobs = len(seeds) * len(glue.DEFAULTS_SAMPLES) * len(glue.EQUAL_BUDGET)
    if (equal_done := len(res.equal)) < equal_jobs:
        todo.append(
            f"- Equal-budget table: {equal_jobs - equal_done} of {equal_jobs} runs not run: "
            "`python benchmarks/glue.py equal` (`benchmarks/gpu_defaults.sh` runs it after the Defaults)"
        )
    decoder_jobs = 1 + len(decoder.ROWS) * len(decoder.SEEDS)  # the zero-shot row, then every row at every seed
    if (decoder_done := len(res.decoder) + len(res.decoder_failed)) < decoder_jobs:  # a result or a recorded failure
        todo.append(
            f"- Instruction tuning on the embedded decoder: {decoder_jobs - decoder_done} of {decoder_jobs} runs not "
            f"run: `{decoder.RUNNER}`"
        )
    front_jobs = glue.front_run_names(seeds)
    if front_missing := [n for n in front_jobs if n not in res.front]:
        todo.append(f"- The front: {len(front_missing)} of {len(front_jobs)} runs not run (e.g. "
                    f"{', '.join(front_missing[:3])}): `python benchmarks/glue.py front`")  # fmt: skip
    front_rows = [decoder.run_name(label, s) for s in seeds for label in (decoder.SCHEDULE, *decoder.FRONT_ROWS)]
    if missing := [n for n in front_rows if n not in res.decoder_front]:
        todo.append(f"- The front on the embedded decoder: {len(missing)} of {len(front_rows)} runs not run: "
                    f"`{decoder.RUNNER} --front` (a GPU job: about 4 CPU-hours per seed)")  # fmt: skip
    if len(load("epochs")) < len(glue.EPOCH_RUNS):
        todo.append("- Longer runs of AdaLoRA on MRPC: `python benchmarks/glue.py epochs`")
    if len(load("head")) < len(glue.HEAD_RERUNS):
        todo.append("- The head experiment: `python benchmarks/glue.py head`")
    if len(load("lrsearch")) < sum(len(tasks) * len(lrs) for tasks, lrs, _ in glue.LR_SEARCH.values()):
        todo.append(
            "- Learning rates of full fine-tuning (the bars), AdaLoRA and EVA: `python benchmarks/glue.py lrsearch`"
        )
    todo.append("- The runner is resumable: `python benchmarks/glue.py all` continues where these results stop.")
    todo.append(
        "- Not done: a learning-rate search for the longer runs (every method runs at its `sora train` default "
        "there), more epochs, and the paper's best-dev-checkpoint selection; Table 2 and Table 4 at the `sora train` "
        "defaults (they use the benchmark gates; Table 4 times the training step, which the threshold rule does not "
        "change); a GPU run."
    )
    return "\n".join(todo)
