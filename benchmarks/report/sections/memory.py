"""## Memory: benchmarks/memory.py's CPU runs. Per process, the full-precision base against the 4-bit base
(``--compare 4bit``: the embedded MiniLM-L6 on SST-2, and the embedded decoder on chat records, ``--task causal-lm``),
2 DDP processes against 2 FSDP2 ones (``--compare fsdp``), and RSS over the epochs of one run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..load import RESULTS, ROOT, Results, read_json
from ..markdown import TASK_NAMES, table
from .overhead import render_generic

MIB = 1024 * 1024

QUANT = RESULTS / "memory_4bit_cpu.json"
QUANT_DECODER = RESULTS / "memory_4bit_decoder_cpu.json"
SHARDED = RESULTS / "memory_fsdp_cpu.json"
EPOCHS = RESULTS / "memory_cpu.json"


def _mib(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _data(s: dict[str, Any]) -> str:
    """What one training step reads, and what is scored."""
    batch, task = s.get("batch_size_per_process"), s.get("task")
    if task != "causal-lm":
        examples = f"{batch} {TASK_NAMES.get(task, task)} examples per process"
        return f"{examples} (seq {s.get('max_seq_length')}, 1 epoch, {s.get('eval_samples')} dev examples scored)"
    records = s.get("records", {})
    tokens = records.get("tokens_per_record", {}).get("train", {})
    length = f", {tokens['min']}-{tokens['max']} tokens, median {tokens['median']:.0f}" if tokens else ""
    return (
        f"{batch} records per process, benchmarks/decoder.py's chat and text records (its `build_data`: SST-2, RTE "
        f"and MRPC questions with a one-word answer, SST-2 sentences as text{length}; no record longer than seq "
        f"{s.get('max_seq_length')} drawn, so none truncated; 1 epoch, {s.get('eval_samples')} validation records "
        "scored)"
    )


def _head(d: dict[str, Any], path: Path) -> str:
    """Where the numbers come from: the file, the command, the settings and the machine."""
    s, m = d.get("settings", {}), d.get("machine", {})
    threads = s.get("omp_num_threads")
    return (
        f"Rendered from `{path.relative_to(ROOT).as_posix()}`: {s.get('steps')} training steps of {_data(s)}, "
        f"the {s.get('model', 'embedded MiniLM-L6')}, "
        f"{threads} thread{'' if threads == 1 else 's'} per process; {m.get('cpu')}, {m.get('nproc')} cores "
        f"(shared, load average {(m.get('loadavg') or ['?'])[0]}), torch {m.get('torch')}, "
        f"bitsandbytes {m.get('bitsandbytes')}.\n\n"
        f"```bash\n{d.get('command')}\n```\n\n"
    )


def _rss(p: dict[str, Any]) -> list[str]:
    return [_mib(p.get("peak_rss_loaded_mib"), 0), _mib(p["peak_rss_training_mib"], 0), _mib(p["peak_rss_end_mib"], 0)]


def quant_text(d: dict[str, Any], path: Path) -> str:
    results = d.get("results", {})
    steps = d.get("settings", {}).get("steps")
    rows = []
    for label, r in results.items():
        p = r["processes"][0]
        rows.append([f"`{label}`", *_rss(p), _mib(p["frozen_base_mib"], 2), _mib(p["base_4bit_mib"], 2),
                     _mib(p["adapter_mib"], 2), _mib(p["head_mib"], 2), _mib(p["gradients_mib"], 2),
                     _mib(p["optimizer_state_mib"], 2)])  # fmt: skip
    text = _head(d, path) + table(
        ["configuration", "peak RSS: loaded", f"after {steps} steps", "end of run", "frozen base",
         "of it NF4", "adapter", "head", "gradients", "optimizer state"],
        rows,
    )  # fmt: skip
    text += (
        "\n\nMiB per process. Peak RSS: `ru_maxrss` when training begins (model loaded), after the last step, and "
        "at the end of the run (which loads the base again to score the exported adapter). Tensor bytes after the "
        "last step; the frozen base counts the NF4 weights with their quantization constants (absmax, double "
        "quantization, code tables). The same `sora train` command line each, `--load-in-4bit` added (below)."
    )
    text += _what_4bit(results)
    commands = "\n".join(f"{r['sora_command']}" for r in results.values())
    return text + f"\n\nThe measured commands (each under `benchmarks/memory.py --probe`):\n\n```bash\n{commands}\n```"


def _what_4bit(results: dict[str, Any]) -> str:
    """The paragraph under a 4-bit table, from its numbers (SoRA on either base; LoRA for the gates' bytes)."""
    full, quant = results.get("sora-fp32"), results.get("sora-4bit")
    if not (full and quant):
        return ""
    f, q = full["processes"][0], quant["processes"][0]
    nf4 = q["base_4bit_mib"]
    as_fp32 = q.get("base_4bit_as_fp32_mib") or (f["frozen_base_mib"] - q["base_full_precision_mib"])
    kept = q["base_full_precision_mib"]
    text = (
        f"\n\n**What it shows.** The linear layers' weights in NF4 take {nf4:.2f} MiB against {as_fp32:.2f} MiB in "
        f"fp32 (1/{as_fp32 / nf4:.1f}, constants included). The frozen base as a whole goes from "
        f"{f['frozen_base_mib']:.1f} to {q['frozen_base_mib']:.1f} MiB "
        f"({100 * (q['frozen_base_mib'] / f['frozen_base_mib'] - 1):+.0f}%): what is not a quantized linear layer "
        f"stays in fp32, {kept:.1f} MiB, {100 * kept / f['frozen_base_mib']:.0f}% of the fp32 base"
    )
    embeddings = quant["raw"][0]["after_training_steps"].get("embeddings")  # recorded since the decoder's rows
    if embeddings:
        size = sum(e["bytes"] for e in embeddings) / MIB
        names = "; ".join(
            f"`{e['name']}` {' x '.join(f'{n:,}' for n in e['shape'])}"
            + (f", tied to `{'`, `'.join(e['tied_to'])}`" if e["tied_to"] else "")
            for e in embeddings
        )
        text += (
            f": the embeddings, {size:.1f} MiB of it ({names}), and {kept - size:.2f} MiB of norms and of the linear "
            "layers' biases, if any."
        )
    else:
        text += ": the embeddings, the norms and the linear layers' biases."
    parts = ("adapter_mib", "head_mib", "gradients_mib", "optimizer_state_mib")
    head = f"and the head {f['head_mib']:.2f} MiB" if f["head_mib"] else "alone: the LM head stays frozen"
    text += (
        f" The trainable tensors (the adapter {f['adapter_mib']:.2f} MiB {head}), their gradients and the optimizer "
        f"state are {'the same' if all(f[k] == q[k] for k in parts) else 'not the same'} on both bases"
    )
    lora = results.get("lora-fp32")
    text += (
        f", and SoRA's adapter is LoRA's plus its gates ({_adapter_bytes(full) - _adapter_bytes(lora):,} bytes)."
        if lora
        else "."
    )
    loaded = (q.get("peak_rss_loaded_mib") or 0) - (f.get("peak_rss_loaded_mib") or 0)
    delta = q["peak_rss_training_mib"] - f["peak_rss_training_mib"]
    saved = f["frozen_base_mib"] - q["frozen_base_mib"]
    text += (
        f" Against the {saved:,.0f} MiB that the frozen base saves, the 4-bit process peaks {abs(loaded):,.0f} MiB "
        f"{'higher' if loaded > 0 else 'lower'} once loaded and {abs(delta):,.0f} MiB "
        f"{'higher' if delta > 0 else 'lower'} after the steps. About {f.get('rss_after_imports_mib', 0):.0f} MiB of "
        "every peak is the runtime after its imports (Python, torch, transformers, PEFT, bitsandbytes), and the rest "
        "is set by transients (not measured one by one): loading (the 4-bit base is read from the fp32 checkpoint "
        "and quantized as it loads), activations, and on the 4-bit base bitsandbytes' dequantized fp32 weights in "
        f"the forward and backward passes; the steps raise the peak by {_steps(f):,.0f} MiB on the fp32 base and "
        f"{_steps(q):,.0f} MiB on the 4-bit one. "
    )
    if delta > 0:
        text += "On a model this small the transients outweigh the resident saving."
    else:
        text += f"The peak after the steps falls by {100 * -delta / saved:.0f}% of the resident saving."
    return text + (
        " On a base whose weights dominate the process (a 7B model: about 26 GiB in fp32) the resident-weight saving "
        "is what counts."
    )


def _steps(p: dict[str, Any]) -> float:
    """How much the training steps raise a process's peak RSS above its peak once loaded."""
    return p["peak_rss_training_mib"] - (p.get("peak_rss_loaded_mib") or p["peak_rss_training_mib"])


def sharded_text(d: dict[str, Any], path: Path) -> str:
    results = d.get("results", {})
    steps = d.get("settings", {}).get("steps")
    rows = []
    for label, r in results.items():
        for p in r["processes"]:
            rows.append([f"`{label}`", str(p["rank"]), *_rss(p), _mib(p["parameters_mib"], 2),
                         _mib(p["parameters_whole_mib"], 2), _mib(p["frozen_base_mib"], 2),
                         _mib(p["adapter_mib"] + p["head_mib"], 2), _mib(p["gradients_mib"], 2),
                         _mib(p["optimizer_state_mib"], 2)])  # fmt: skip
    text = _head(d, path) + table(
        ["configuration", "rank", "peak RSS: loaded", f"after {steps} steps", "end of run", "parameters held",
         "of the whole model", "frozen base", "adapter + head", "gradients", "optimizer state"],
        rows,
    )  # fmt: skip
    text += (
        "\n\nMiB per process, `torchrun --standalone --nproc_per_node 2`, gloo. Peak RSS 'loaded': when training "
        "begins, the model loaded and wrapped (DDP: rank 0's parameters broadcast) or sharded (FSDP2). Parameters "
        "held: the local storage "
        "after the last step (a DTensor's `to_local()` under `--fsdp`, where blocks are resharded after their "
        "forward and backward); gradients just before the last optimizer step (DDP's gradient buckets, a flat "
        "copy of the trainable gradients, are not counted); optimizer state: AdamW's `exp_avg`, `exp_avg_sq`, "
        "`step`, local shards."
    )
    ddp, fsdp = results.get("sora-ddp"), results.get("sora-fsdp")
    if ddp and fsdp:
        a, b = ddp["processes"], fsdp["processes"]
        peaks = [
            [p["peak_rss_training_mib"] for label, r in results.items() if label.endswith(kind) for p in r["processes"]]
            for kind in ("-ddp", "-fsdp")
        ]
        loaded = [
            [p.get("peak_rss_loaded_mib") or 0 for label, r in results.items() if label.endswith(kind)
             for p in r["processes"]]
            for kind in ("-ddp", "-fsdp")
        ]  # fmt: skip
        text += (
            f"\n\n**What it shows.** Under `--fsdp` each process holds {b[0]['parameters_mib']:.1f} MiB of the "
            f"{b[0]['parameters_whole_mib']:.1f} MiB of parameters (every tensor is sharded: frozen base, adapter, "
            f"head), against a whole copy under DDP; gradients ({a[0]['gradients_mib']:.2f} -> "
            f"{b[0]['gradients_mib']:.2f} MiB) and optimizer state ({a[0]['optimizer_state_mib']:.2f} -> "
            f"{b[0]['optimizer_state_mib']:.2f} MiB) halve with them, for LoRA and SoRA alike. The peak RSS per "
            f"process does not: {_span(peaks[1])} MiB under `--fsdp` against {_span(peaks[0])} MiB under DDP after "
            f"the steps. When training begins the two are alike ({_span(loaded[1])} against {_span(loaded[0])} MiB): "
            "each process loads the whole model, then shards it or takes rank 0's broadcast. In the steps FSDP2 "
            "gathers each unit's parameters whole for its forward and backward (the root unit holds the embeddings, "
            "about half of the model) through gloo, and on a model whose 87 MiB of parameters are small against the "
            "runtime's ~570 MiB those transients outweigh the halved resident tensors. What sharding saves, resident "
            "parameters, gradients and optimizer state divided by the number of processes, is what bounds a large "
            "model."
        )
    commands = "\n".join(f"{r['sora_command']}" for r in results.values())
    return text + f"\n\nThe measured commands (each under `benchmarks/memory.py --probe`):\n\n```bash\n{commands}\n```"


def render(res: Results) -> str:
    out = [
        "\n## Memory\n",
        "Measured on the CPU only: peak RSS (`getrusage` `ru_maxrss`, one fresh process per configuration so that "
        "peaks do not mix) and the bytes of the tensors each process holds, read from the live model and optimizer "
        "inside real `sora train` runs (`benchmarks/memory.py`). GPU memory (`torch.cuda.max_memory_allocated`) "
        "was not measured: no GPU was lent.\n",
    ]
    for path, model, extra in ((QUANT, "MiniLM-L6", ""), (QUANT_DECODER, "the embedded decoder", " --task causal-lm")):
        if (d := read_json(path)) is not None:
            heading = f"### Full-precision base against the 4-bit base (`--load-in-4bit`): {model}\n\n"
            out.append(heading + quant_text(d, path) + "\n")
        else:
            command = f"python benchmarks/memory.py --compare 4bit{extra} --output {_rel(path)}"
            out.append(f"4-bit base, {model}: not measured (`{command}`).\n")
    if (d := read_json(SHARDED)) is not None:
        heading = "### 2 DDP processes against 2 sharded ones (`--fsdp`, FSDP2)\n\n"
        out.append(heading + sharded_text(d, SHARDED) + "\n")
    else:
        out.append(f"FSDP: not measured (`python benchmarks/memory.py --compare fsdp --output {_rel(SHARDED)}`).\n")
    if (d := read_json(EPOCHS)) is not None:
        out.append("### RSS over the epochs of one run\n\n" + render_generic(d, EPOCHS))
    return "\n".join(out)


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _span(values: list[float]) -> str:
    low, high = min(values), max(values)
    return f"{low:,.0f}" if round(low) == round(high) else f"{low:,.0f}-{high:,.0f}"


def _adapter_bytes(result: dict[str, Any]) -> int:
    return result["raw"][0]["after_training_steps"]["local_bytes"]["adapter"]
