"""Reading the results: the result JSONs of every GLUE experiment and of the decoder benchmark, the other
benchmarks' JSONs, the machines the GLUE results record, and the selections the sections share (complete seeds, runs
paired by seed)."""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import decoder  # benchmarks/decoder.py: where its results are written
import glue  # the runner's settings: tasks, sizes, trials

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
GLUE = RESULTS / "glue"
GLUE_GPU = RESULTS / "glue-gpu"  # benchmarks/gpu_defaults.sh's results, from a lent GPU
FIGURES = GLUE / "figures"
DECODER = decoder.RESULTS  # benchmarks/decoder.py's results (its --front writes to decoder.FRONT_RESULTS)

Runs = dict[str, dict[str, Any]]


def load(experiment: str, failed: bool = False, root: Path = GLUE) -> Runs:
    """The results of ``experiment`` by run name (``failed``: its failed runs), ``method`` set to the method label."""
    folder = root / experiment / ("failed" if failed else "")
    if not folder.is_dir():
        return {}
    results = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))}
    for r in results.values():
        if "variant" in r:
            r["method"] = r["variant"]
    return results


def read_json(path: Path) -> dict[str, Any] | None:
    """One JSON file (None when it does not exist)."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


class Machine(NamedTuple):
    """What a GLUE result records of the machine that measured it (``runner.machine()``)."""

    nproc: int | None
    cpu: str | None
    gpu: str | None
    torch: str | None
    transformers: str | None
    python: str | None


def machines(root: Path = GLUE) -> collections.Counter[Machine]:
    """The machines recorded by the results of every experiment under ``root`` (failed runs included), with the
    number of result files of each."""
    found: collections.Counter[Machine] = collections.Counter()
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    for folder in folders:
        for r in [*load(folder.name, root=root).values(), *load(folder.name, failed=True, root=root).values()]:
            if m := r.get("machine"):
                found[Machine(*(m.get(field) for field in Machine._fields))] += 1
    return found


def methods_of(results: Runs) -> list[str]:
    """The method labels present in ``results``, in glue.METHODS order."""
    present = {r["method"] for r in results.values()}
    return [m for m in glue.METHODS if m in present]


def score(result: dict[str, Any]) -> float:
    """The task's primary metric, in percent (as GLUE tables print it)."""
    return 100 * result["eval"][result["primary_metric"]]


def complete_seeds(results: Runs) -> Runs:
    """The runs of (method, seed) pairs that finished every task: each method's average covers the same runs."""
    have: dict[tuple[str, int], set[str]] = {}
    for r in results.values():
        have.setdefault((r["method"], r["seed"]), set()).add(r["task"])
    return {k: r for k, r in results.items() if have[(r["method"], r["seed"])] == set(glue.TASKS)}


def paired(runs: Runs, task: str, a: str, b: str, ranks: tuple[int, int] = (glue.RANK,) * 2):
    """(run of a, run of b) for every seed both finished on ``task``; ``ranks``: their ``r``."""
    out = []
    for r in runs.values():
        if r["task"] == task and r["method"] == a and r["hyperparameters"]["r"] == ranks[0]:
            other = runs.get(glue.run_name(task, b, ranks[1], r["seed"]))
            if other:
                out.append((r, other))
    return out


def train_size(runs: Runs, task: str) -> int | None:
    return next((r["train_samples"] for r in runs.values() if r["task"] == task), None)


@dataclass
class Results:
    """Everything the sections read, loaded once; ``out_dir``: the folder of the Markdown file (its links start
    there)."""

    out_dir: Path
    grid: Runs  # xigrid
    hp: Runs  # hpsearch
    t1_all: Runs  # table1, every run
    t1: Runs  # table1, the seeds that every task x method finished
    partial: list[str]  # table1 runs of the other seeds
    t2: Runs
    speed: Runs
    schedules: Runs
    settings: dict[str, Any] | None  # glue.SORA_SETTINGS_FILE
    long_all: Runs
    long_failed: Runs
    long: Runs  # long, the (method, seed) pairs that finished every task
    defaults: Runs
    equal: Runs
    front: Runs  # the front's runs, its schedules among them
    gpu_defaults: Runs
    allocation: Runs
    decoder: Runs  # benchmarks/decoder.py, by run name (``zero-shot``, ``<row>_seed<seed>``)
    decoder_failed: Runs
    decoder_front: Runs  # benchmarks/decoder.py --front, the schedules among them
    machines: collections.Counter[Machine]


def read(out_dir: Path) -> Results:
    t1_all = load("table1")
    # Table 1 uses the seeds that every task x method finished, so each cell averages the same seeds
    seeds = sorted({r["seed"] for r in t1_all.values()})
    complete = [
        s for s in seeds if all(glue.run_name(t, m, glue.RANK, s) in t1_all for t in glue.TASKS for m in glue.METHODS)
    ]
    long_all = load("long")
    return Results(
        out_dir=out_dir,
        grid=load("xigrid"),
        hp=load("hpsearch"),
        t1_all=t1_all,
        t1={k: r for k, r in t1_all.items() if r["seed"] in complete},
        partial=sorted(k for k, r in t1_all.items() if r["seed"] not in complete),
        t2=load("table2"),
        speed=load("speed"),
        schedules=load("schedule"),
        settings=read_json(glue.SORA_SETTINGS_FILE),
        long_all=long_all,
        long_failed=load("long", failed=True),
        long=complete_seeds(long_all),
        defaults=load("defaults"),
        equal=load("equal"),
        front=load("front"),
        gpu_defaults=load("defaults", root=GLUE_GPU),
        allocation=load("allocation"),
        decoder=load(DECODER.name, root=DECODER.parent),
        decoder_failed=load(DECODER.name, failed=True, root=DECODER.parent),
        decoder_front=load(decoder.FRONT_RESULTS.name, root=decoder.FRONT_RESULTS.parent),
        machines=machines(),
    )
