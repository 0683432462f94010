"""## Commands: how every number is produced, and the command lines of Table 1's RTE seed-0 runs."""

from __future__ import annotations

import glue

from ..load import Results


def commands_section() -> str:
    return (
        "```bash\n"
        "# everything, in order of value, resumable (runs whose JSON exists are skipped); two workers share the runs\n"
        "python benchmarks/glue.py all [--stop-at HH:MM] &\n"
        "python benchmarks/glue.py all [--stop-at HH:MM] &\n"
        "# one experiment: xigrid | hpsearch | table1 | table2 | speed | schedule | long (--seeds 0 1 2)\n"
        "python benchmarks/glue.py table1 --seeds 0 1 2\n"
        "python benchmarks/build_report.py   # this file\n"
        "```\n\n"
        "Every result JSON holds `command`, the `sora train` (or `sora schedule`) command line that reproduces that "
        "run alone (the runner calls `sora.train.train` in-process with the same settings). Table 1, RTE, seed 0:\n\n"
    )


def render(res: Results) -> str:
    examples = [res.t1.get(glue.run_name("rte", m, glue.RANK, 0)) for m in glue.METHODS]
    example = next(iter(res.t1.values()), None) or next(iter(res.grid.values()), None)
    examples = [e["command"] for e in examples if e] or ([example["command"]] if example else [])
    return "\n".join(
        ["\n## Commands\n", commands_section() + ("```bash\n" + "\n".join(examples) + "\n```" if examples else "")]
    )
