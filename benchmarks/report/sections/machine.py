"""## Machine: the machine the report is built on."""

from __future__ import annotations

import platform

import glue

from ..load import Results


def render(res: Results) -> str:
    import torch

    info = glue.machine()
    groups = (res.grid, res.hp, res.t1_all, res.t2, res.long_all, res.speed)
    loads = [r["loadavg_start"][0] for group in groups for r in group.values()]
    return "\n".join(
        [
            "## Machine\n",
            f"{info['nproc']} CPU cores ({info['cpu']}), shared with other developers' jobs (1-minute load average "
            f"{min(loads):.1f}-{max(loads):.1f} at the start of the runs), no GPU; torch {torch.__version__}, "
            f"transformers {info['transformers']}, Python {info['python']}, {platform.platform()}.\n",
        ]
    )
