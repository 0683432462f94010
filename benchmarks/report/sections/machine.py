"""## Machine: what the GLUE runs were measured on, as their result files record it (not the machine building the
report)."""

from __future__ import annotations

import collections

from ..load import Machine, Results


def describe(m: Machine) -> tuple[str, str]:
    """The hardware and the software of ``m`` in words."""
    hardware = f"{m.nproc} CPU cores ({m.cpu})"
    gpu = "no GPU" if m.gpu is None else f"GPU {m.gpu}"
    return hardware, f"{gpu}; torch {m.torch}, transformers {m.transformers}, Python {m.python}"


def machine_text(machines: collections.Counter[Machine], loads: list[float]) -> str:
    """One machine: its line; several: each with its number of result files."""
    shared = (
        f"shared with other developers' jobs (1-minute load average {min(loads):.1f}-{max(loads):.1f} at the start "
        "of the runs)"
        if loads
        else "shared with other developers' jobs"
    )
    if not machines:
        return "Not recorded: no GLUE result file names its machine."
    if len(machines) == 1:
        hardware, software = describe(next(iter(machines)))
        return f"{hardware}, {shared}, {software}."
    each = "; ".join(f"{', '.join(describe(m))} ({n} result files)" for m, n in machines.most_common())
    return f"The GLUE result files record {len(machines)} machines: {each}. The machines were {shared}."


def render(res: Results) -> str:
    groups = (res.grid, res.hp, res.t1_all, res.t2, res.long_all, res.speed)
    loads = [r["loadavg_start"][0] for group in groups for r in group.values()]
    return "\n".join(["## Machine\n", machine_text(res.machines, loads) + "\n"])
