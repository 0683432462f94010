"""What the benchmark scripts share: the machine a result records, the ``sora train`` command line of a run, the GLUE
folder, and the resumable runner of ``benchmarks/glue.py`` and ``benchmarks/decoder.py``.

A runner's run (:class:`Job`) is claimed with a lock file ``<scratch>/locks/<experiment>/<name>.lock`` holding the
worker's pid (a dead worker's lock is taken over), so several invocations may share one run list; a run whose result
JSON exists is skipped, so the same command continues an interrupted invocation. A failed run is recorded apart (its
``failed`` file) and not retried by the invocation that ran it; where failures are results, not by a later one either.
``--stop-at HH:MM`` (UTC) launches no new run after that time.

The scripts import this module as they import each other (``import runner``: benchmarks/ is on ``sys.path`` when a
script runs, and build_report.py puts it there).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

NO_GLUE_DIR = "no GLUE folder: pass --data-dir DIR (the GLUE TSVs) or set GLUE_DIR"


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """The machine a runner's result records (benchmarks/report reads it: the Machine section)."""
    import torch
    import transformers

    return {
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def command_line(cfg: Any, threads: int) -> str:
    """The shell command that reproduces ``cfg`` (a ``TrainConfig``): ``sora train`` with ``sora.cli.train_argv``'s
    arguments at ``threads`` OpenMP threads. The model is left out: a runner's is the task's embedded one, or a
    folder carried to a lent machine (``SORA_DEVICE_MODEL``)."""
    from sora.cli import train_argv

    return f"OMP_NUM_THREADS={threads} " + shlex.join(["sora", "train", *train_argv(replace(cfg, model=None))])


def require_glue_dir(data_dir: str | None) -> str:
    """``data_dir`` (``--data-dir``, default ``$GLUE_DIR``) for a run that reads GLUE; without one, a one-line exit."""
    if not data_dir:
        raise SystemExit(NO_GLUE_DIR)
    return data_dir


def add_data_option(parser: argparse.ArgumentParser) -> None:
    """``--data-dir``, default ``$GLUE_DIR`` (none: :func:`require_glue_dir` asks for it when a run needs the data)."""
    parser.add_argument("--data-dir", default=os.environ.get("GLUE_DIR"), help="GLUE TSV folder (default: $GLUE_DIR)")


def add_runner_options(parser: argparse.ArgumentParser, scratch: str) -> None:
    """The options of every resumable benchmark runner: the GLUE folder, the scratch folder (default ``scratch``),
    ``--stop-at`` and ``--threads``."""
    add_data_option(parser)
    parser.add_argument("--scratch", default=scratch, help=f"run folders and locks (default: {scratch})")
    parser.add_argument("--stop-at", type=_stop_at, default=None, help="UTC HH:MM: launch no new run after it")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: fastest on a busy CPU)")


def quiet_threads(threads: int) -> None:
    """``threads`` torch threads for this process and its children; the libraries' progress bars and logs off."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import torch
    import transformers

    torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


class Budget:
    """Launch no new run after ``stop_at`` (UTC)."""

    def __init__(self, stop_at: dt.datetime | None) -> None:
        self.stop_at = stop_at

    def exhausted(self) -> bool:
        return self.stop_at is not None and dt.datetime.now(dt.UTC) >= self.stop_at


@dataclass(frozen=True)
class Run:
    """A claimed run, set up: ``work`` runs it and returns its own numbers, ``fields`` are what its result records
    besides them and the runner's, ``failure`` what a failure record holds, ``summary`` its result in one line."""

    fields: dict[str, Any]
    work: Callable[[], dict[str, Any]]
    failure: Callable[[], dict[str, Any]]
    summary: Callable[[dict[str, Any]], str]


@dataclass(frozen=True)
class Job:
    """One resumable run: its lock (``experiment``, ``name``), its result JSON and failure record, its run folder (in
    the scratch folder: emptied before it runs), and ``setup``, called once the run is claimed."""

    experiment: str
    name: str
    result: Path
    failed: Path
    out: Path
    setup: Callable[[], Run]
    failures_are_results: bool = True  # a recorded failure is final: no later invocation retries it

    def failed_before(self) -> bool:
        return self.failures_are_results and self.failed.is_file()


class Runner:
    """A resumable runner's state: the scratch folder, the GLUE folder, the ``--stop-at`` budget, the threads, and
    what this invocation ran and saw fail."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.scratch = Path(args.scratch)
        self.data_dir = args.data_dir
        self.budget = Budget(args.stop_at)
        self.threads = args.threads
        self.invocation = f"{now()}-{os.getpid()}"
        self.ran = 0
        self.failed: list[str] = []
        self.failed_names: set[str] = set()

    def attempt(self, job: Job) -> dict[str, Any] | None:
        """``job``'s result: read if its JSON exists, else run now, unless the budget is spent or another worker
        holds it (None). A failed run is ``{}``: its failure recorded (with the traceback on stderr), and the others
        go on. The result: the run's own numbers, ``job``'s fields, the experiment, this invocation, when it finished,
        the load average at its start and end, and the machine."""
        from sora import _io

        key = f"{job.experiment}/{job.name}"
        if key in self.failed_names or job.failed_before():
            return {}
        done = _read_json(job.result)
        if done is not None or self.budget.exhausted():
            return done
        with self.claim(job.experiment, job.name) as claimed:
            if not claimed:
                return None
            done = _read_json(job.result)  # finished by another worker between the check and the claim
            if done is not None:
                return done
            if job.failed_before():
                return {}
            shutil.rmtree(job.out, ignore_errors=True)
            run = job.setup()
            print(f"[{now()}] {key}: start", flush=True)
            own = {"experiment": job.experiment, "invocation": self.invocation, "loadavg_start": _load()}
            try:
                numbers = run.work()
            except Exception as e:  # one failed run must not stop the others
                traceback.print_exc()
                error = f"{type(e).__name__}: {e}"
                self.failed.append(f"{key}: {error}")
                self.failed_names.add(key)
                _io.write_json(job.failed, {**run.failure(), **own, "error": error, "finished": now()})
                return {}
            result = {**numbers, **run.fields, **own, "finished": now(), "loadavg_end": _load(), "machine": machine()}
            _io.write_json(job.result, result)
            self.ran += 1
            print(f"[{now()}] {key}: {run.summary(result)}", flush=True)
            return result

    def schedule_run(
        self,
        experiment: str,
        name: str,
        result: Path,
        cfg: Any,
        xis: list[float],
        epochs_per_stage: float,
        options: str,
        fields: dict[str, Any],
        targets: list[float] | None = None,
        score_stage: Callable[[Path], dict[str, Any]] | None = None,
    ) -> bool:
        """One resumable ``sora schedule`` run of ``cfg`` (a ``TrainConfig``; ``options``: its schedule flags on the
        command line), claimed as ``experiment``/``name``; True when its ``result`` file exists. The result:
        ``schedule.json``, the command, ``fields``, the machine, and per stage what ``score_stage`` gives for the
        stage's adapter folder. A stage that prunes every rank ends it with the stages done; the schedule's curves go
        beside the result."""
        from sora import _io
        from sora.schedule import run_schedule

        if result.is_file():
            return True
        if self.budget.exhausted():
            return False
        with self.claim(experiment, name) as claimed:
            if not claimed:
                return False
            out = Path(cfg.output_dir)
            resume = (out / "schedule.json").is_file()
            if out.exists() and not resume:
                shutil.rmtree(out)
            print(f"[{now()}] {experiment}/{name}: start", flush=True)
            error = None
            try:
                run_schedule(cfg, xis, epochs_per_stage, resume=resume, targets=targets)
            except Exception as e:  # e.g. a stage pruned every rank: the finished stages are still a result
                traceback.print_exc()
                error = f"{type(e).__name__}: {e}"
                if not (out / "schedule.json").is_file() or "pruned every rank" not in error:
                    self.failed.append(f"{experiment}/{name}: {error}")
                    return False
            command = command_line(cfg, self.threads).replace(" train ", " schedule ", 1)
            command = command.replace(f" --epochs {cfg.epochs:g}", "")
            epochs = f"{epochs_per_stage:g}"  # e.g. 1, but 1/3 in full: the command must train the same steps
            epochs = epochs if float(epochs) == epochs_per_stage else repr(epochs_per_stage)
            command += f"{options} --epochs-per-stage {epochs}"
            saved = json.loads((out / "schedule.json").read_text(encoding="utf-8"))
            if score_stage is not None:
                for row in saved["stages"]:
                    row.update(score_stage(out / "adapters" / f"stage_{row['stage']}"))
            record = {**saved, "command": command, "finished": now(), "machine": machine(), "error": error, **fields}
            _io.write_json(result, record)
            shutil.copyfile(out / "curves.png", result.with_name(f"{name}_curves.png"))
            self.ran += 1
            print(f"[{now()}] {experiment}/{name}: {len(saved['stages'])} stages", flush=True)
            return True

    @contextmanager
    def claim(self, experiment: str, name: str) -> Iterator[bool]:
        """Hold the lock of ``experiment``/``name`` for the block (False: another live worker holds it)."""
        lock = self.scratch / "locks" / experiment / f"{name}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    pid = int(lock.read_text() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and _alive(pid):
                    break
                lock.unlink(missing_ok=True)  # a stale lock of a dead worker
                continue
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            try:
                yield True
            finally:
                lock.unlink(missing_ok=True)
            return
        yield False


def until_done(step: Callable[[], bool], worker: Runner, poll: float = 20.0) -> bool:
    """Repeat ``step`` (which skips finished and busy runs) until it completes or the budget ends."""
    while True:
        if step():
            return True
        if worker.budget.exhausted():
            return False
        time.sleep(poll)


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_at(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    hour, minute = (int(x) for x in text.split(":"))
    now = dt.datetime.now(dt.UTC)
    stop = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    return stop if stop > now else stop + dt.timedelta(days=1)  # a time already past today means tomorrow's
