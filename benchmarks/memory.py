"""Peak memory (RSS) per epoch of a multi-epoch ``sora train`` run: does memory grow epoch over epoch?

The run is ``sora.train.train`` in this process (SoRA, the embedded MiniLM-L6, an RTE subset), exactly what
``sora train`` does, with one addition: a ``TrainerCallback`` attached to the Trainer that ``train`` builds (the
benchmark swaps ``sora.train.SoraTrainer`` for a subclass that adds the callback; nothing else changes). What is
measured, for the whole process (model, data, Trainer, Python heap):

* ``peak_rss_mib``: ``getrusage(RUSAGE_SELF).ru_maxrss``, the process's peak RSS so far, read when epoch k's
  checkpoint has been saved (``on_save``; one per epoch: its training steps, dev evaluation and checkpoint are done);
* ``rss_mib``: the current RSS (psutil) at that moment;
* ``epoch_median_rss_mib``, ``epoch_min_rss_mib``, ``epoch_max_rss_mib``: the median, smallest and largest current
  RSS that a background thread sampled every 0.1 s from the start of epoch k to its checkpoint (short spikes
  between samples can be missed; ``ru_maxrss`` cannot miss them).

The current RSS at one moment swings by tens of MiB (the allocator keeps freed memory for a while), so the verdict
reads the epoch's median. Verdict: "no growth" if both hold, each within ``max(2% of the earlier value, 16 MiB)``:

* the median RSS of the last epoch is at most that much above the median of epoch 2 (epoch 1 still allocates
  caches, optimizer state, the first checkpoint);
* the peak RSS grows at most that much over the second half of the run (from epoch ``ceil(epochs / 2)`` to the
  last). The peak is a high-water mark: it steps up whenever a larger transient than any before occurs (batch
  shapes vary from epoch to epoch with length grouping), then stays. A leak keeps raising it to the end; a
  ratchet that levels off does not. Its growth from epoch 2 is reported too, as information.

SoRA runs with ``TrainConfig``'s defaults (ξ, threshold, gate init: the JSON records them). Every step logs
(``logging_steps=1``), so SoRA's per-log work (live ranks, non-zero parameters) runs at every step.

Usage::

    python benchmarks/memory.py --output benchmarks/results/memory_cpu.json
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import peft
import psutil
import torch
import transformers
from transformers import TrainerCallback

import sora.train as sora_train
from sora._io import write_json

MIB = 1024 * 1024
GROWTH_PERCENT = 2.0
GROWTH_FLOOR_MIB = 16.0
SAMPLE_SECONDS = 0.1
REPO = Path(__file__).resolve().parents[1]


def peak_rss_mib() -> float:
    """The process's peak RSS so far: ru_maxrss is in KiB on Linux, in bytes on macOS."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024


def rss_mib(process: psutil.Process) -> float:
    return process.memory_info().rss / MIB


class MemoryRecorder(TrainerCallback):
    """One row per epoch at its checkpoint; a sampler thread keeps the largest RSS seen in the current epoch."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.rows: list[dict[str, Any]] = []
        self.epoch = 0
        self.epoch_samples: list[float] = []
        self.samples = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._started = 0.0

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            value = rss_mib(self.process)
            with self._lock:
                self.epoch_samples.append(value)
                self.samples += 1

    def on_train_begin(self, args, state, control, **kwargs):
        self._started = time.perf_counter()
        self._thread.start()

    def on_epoch_begin(self, args, state, control, **kwargs):
        with self._lock:
            self.epoch += 1
            self.epoch_samples = [rss_mib(self.process)]

    def on_save(self, args, state, control, **kwargs):
        current = rss_mib(self.process)
        with self._lock:
            values = [*self.epoch_samples, current]
        self.rows.append(
            {
                "epoch": self.epoch,
                "step": state.global_step,
                "peak_rss_mib": round(peak_rss_mib(), 1),
                "rss_mib": round(current, 1),
                "epoch_median_rss_mib": round(statistics.median(values), 1),
                "epoch_min_rss_mib": round(min(values), 1),
                "epoch_max_rss_mib": round(max(values), 1),
                "epoch_samples": len(values),
                "seconds": round(time.perf_counter() - self._started, 1),
            }
        )
        print(
            f"epoch {self.epoch}: peak RSS {self.rows[-1]['peak_rss_mib']:.1f} MiB, RSS {current:.1f} MiB, "
            f"median RSS {self.rows[-1]['epoch_median_rss_mib']:.1f} MiB",
            flush=True,
        )

    def on_train_end(self, args, state, control, **kwargs):
        self._stop.set()
        self._thread.join()


@contextmanager
def recording(recorder: MemoryRecorder):
    """Make ``sora.train.train`` build its Trainer with ``recorder`` attached."""
    original = sora_train.SoraTrainer

    class MeasuredTrainer(original):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.add_callback(recorder)

    sora_train.SoraTrainer = MeasuredTrainer
    try:
        yield
    finally:
        sora_train.SoraTrainer = original


def growth(rows: list[dict[str, Any]], key: str, start_epoch: int) -> dict[str, float | bool]:
    """Growth of ``key`` from the end of ``start_epoch`` to the end of the last epoch, against the limit."""
    first, last = rows[start_epoch - 1][key], rows[-1][key]
    limit = max(GROWTH_PERCENT / 100 * first, GROWTH_FLOOR_MIB)
    return {
        "from_epoch": start_epoch,
        "to_epoch": rows[-1]["epoch"],
        "mib": round(last - first, 1),
        "percent": round(100 * (last - first) / first, 2),
        "limit_mib": round(limit, 1),
        "ok": last - first <= limit,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--samples", type=int, default=256, help="RTE training examples (default: 256)")
    parser.add_argument("--eval-samples", type=int, default=128, help="RTE dev examples scored every epoch")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    default_glue = os.environ.get("GLUE_DIR", str(REPO.parent / "shared" / "data" / "glue"))
    parser.add_argument("--data-dir", default=default_glue, help="GLUE TSV folder (default: $GLUE_DIR or ../shared)")
    parser.add_argument("--output", help="write the numbers to this JSON file")
    args = parser.parse_args(argv)
    if args.epochs < 4 or min(args.samples, args.eval_samples, args.seq_len, args.batch_size) < 1:
        parser.error("--epochs must be >= 4 (growth is measured from epoch 2), the sizes >= 1")

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    process = psutil.Process()
    machine = {
        "nproc": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "psutil": psutil.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    recorder = MemoryRecorder()
    with tempfile.TemporaryDirectory() as scratch:
        cfg = sora_train.TrainConfig(
            task="rte",
            output_dir=str(Path(scratch) / "run"),
            method="sora",
            data_dir=args.data_dir,
            epochs=args.epochs,
            batch_size=args.batch_size,
            max_seq_length=args.seq_len,
            max_train_samples=args.samples,
            max_eval_samples=args.eval_samples,
            logging_steps=1,
        )
        before = {"peak_rss_mib": round(peak_rss_mib(), 1), "rss_mib": round(rss_mib(process), 1)}
        print(f"SoRA on RTE ({args.samples} examples, seq {args.seq_len}, batch {args.batch_size}), MiniLM-L6, CPU")
        print(f"before training: peak RSS {before['peak_rss_mib']} MiB, RSS {before['rss_mib']} MiB", flush=True)
        started = time.perf_counter()
        with recording(recorder):
            metrics = sora_train.train(cfg)
        seconds = time.perf_counter() - started
    rows = recorder.rows
    if len(rows) != args.epochs:
        raise SystemExit(f"expected one checkpoint per epoch, got {len(rows)} for {args.epochs} epochs")
    current = growth(rows, "epoch_median_rss_mib", 2)
    peak = growth(rows, "peak_rss_mib", math.ceil(args.epochs / 2))
    peak_from_2 = growth(rows, "peak_rss_mib", 2)
    verdict = "no growth" if peak["ok"] and current["ok"] else "memory grows epoch over epoch"

    print()
    print("RSS in MiB; peak: ru_maxrss so far; at ckpt: current RSS at the epoch's checkpoint; median/min/max: epoch")
    print(f"{'epoch':>5} {'step':>5} {'peak':>8} {'at ckpt':>8} {'median':>8} {'min':>8} {'max':>8} {'s':>7}")
    for r in rows:
        print(
            f"{r['epoch']:>5} {r['step']:>5} {r['peak_rss_mib']:>8.1f} {r['rss_mib']:>8.1f} "
            f"{r['epoch_median_rss_mib']:>8.1f} {r['epoch_min_rss_mib']:>8.1f} {r['epoch_max_rss_mib']:>8.1f} "
            f"{r['seconds']:>7.1f}"
        )
    for name, g in (("median RSS", current), ("peak RSS", peak), ("peak RSS (information)", peak_from_2)):
        print(
            f"{name} growth, epoch {g['from_epoch']} -> {g['to_epoch']}: {g['mib']:+.1f} MiB ({g['percent']:+.2f}%), "
            f"limit {g['limit_mib']:.1f} MiB"
        )
    print(f"verdict: {verdict} (limit: max({GROWTH_PERCENT}% of the earlier value, {GROWTH_FLOOR_MIB:.0f} MiB))")

    result = {
        "benchmark": "memory",
        "what": "process RSS per epoch of sora.train.train (SoRA, MiniLM-L6, RTE subset), in process",
        "command": "python benchmarks/memory.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {
            "task": "rte",
            "method": "sora",
            "epochs": args.epochs,
            "train_samples": args.samples,
            "eval_samples": args.eval_samples,
            "max_seq_length": args.seq_len,
            "batch_size": args.batch_size,
            "r": cfg.r,
            "xi": cfg.xi,
            "threshold": cfg.threshold,
            "gate_init": cfg.gate_init,
            "logging_steps": 1,
            "sample_seconds": SAMPLE_SECONDS,
        },
        "machine": machine,
        "before_training": before,
        "epochs": rows,
        "rss_samples": recorder.samples,
        "growth": {"median_rss": current, "peak_rss_second_half": peak, "peak_rss_from_epoch_2": peak_from_2},
        "threshold": {
            "percent": GROWTH_PERCENT,
            "floor_mib": GROWTH_FLOOR_MIB,
            "rule": "no growth: epoch median RSS 2 -> last and peak RSS epoch ceil(epochs/2) -> last each within "
            "max(percent of the earlier value, floor_mib); peak RSS from epoch 2 is information only",
        },
        "verdict": verdict,
        "train_seconds": round(seconds, 1),
        "eval": metrics["eval"],
        "live_ranks": sum(metrics["ranks"].values()),
    }
    if args.output:
        write_json(args.output, result)
        print(f"wrote {args.output}")
    return result


if __name__ == "__main__":
    main()
