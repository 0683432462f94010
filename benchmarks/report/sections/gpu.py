"""## GPU path: benchmarks/overhead.py's CUDA runs where there are any, what stands for them where not."""

from __future__ import annotations

from typing import Any

from ..load import RESULTS, Results, read_json
from ..markdown import table
from .overhead import overhead_text


def _summary(runs: list[dict[str, Any]]) -> str:
    """One row per CUDA run: the step-time ratios of medians, with the median and IQR of the per-round ratios."""
    rows = []
    for d in runs:
        s, ratios, paired = d["settings"], d["ratios"], d["paired_ratios"]
        setting = f"{s['model']}{', bf16' if s.get('bf16') else ''}{', compiled' if s.get('torch_compile') else ''}"
        cells = [
            f"{ratios[key]:.3f} ({paired[key]['median']:.3f}, IQR {paired[key]['iqr']:.3f})"
            for key in ("sora_over_lora", "sora_over_adalora", "adalora_over_lora")
        ]
        rows.append([setting, d["machine"]["device"], *cells, f"{ratios['gate_step_percent_of_sora_step']:.2f} %"])
    return (
        "Training-step ratios on a GPU (batch 32 x seq 128; ratio of medians, in brackets the median and IQR of "
        "the per-round ratios; each run in full below). Where a run names `--model-path /tmp/smollm2`, "
        "benchmarks/gpu_overhead.sh built SmolLM2 there from its configuration with random weights (the package "
        "is not on the device; the step time does not depend on the weights' values).\n\n"
        + table(["model", "device", "SoRA/LoRA", "SoRA/AdaLoRA", "AdaLoRA/LoRA", "gate step / SoRA step"], rows)
        + "\n"
    )


def render(res: Results) -> str:
    out = ["\n## GPU path\n"]
    paths = sorted(RESULTS.glob("overhead_cuda*.json"))
    runs = [read_json(path) for path in paths]
    if runs:
        out.append(_summary(runs))
        if not any(d["settings"].get("torch_compile") for d in runs):
            out.append(
                "**torch.compile on a GPU: not measured yet.** `bash benchmarks/gpu_overhead.sh compile` times "
                "MiniLM and DeBERTa-v3-base with `--torch-compile`; on an H100 the first warm-up round (compiling "
                "the four training models) took 100 s for MiniLM, so the script gives each run 300 s.\n"
            )
        out.extend(overhead_text(path) + "\n" for path in paths)
    else:
        out.append(
            "**GPU step-time ratios: not measured.** No GPU was lent to the sessions that changed SoRA's gate path "
            "(the gates folded into B for the whole model, then all gates in one tensor), so SoRA/LoRA and "
            "SoRA/AdaLoRA on a GPU are unknown for the current code (the target: SoRA/LoRA <= 1.03 at "
            "DeBERTa-v3-base, batch 32 x seq 128, bf16; before those changes 1.16-1.21); what stands for them here "
            "is the operator count above. "
            "The measurement, on a GPU: `python benchmarks/overhead.py --device cuda --bf16 --model deberta-v3-base "
            "--output benchmarks/results/overhead_cuda_deberta_bf16.json` (and `--model minilm`).\n"
        )
    out.append(
        "`sora train --bf16` / `--fp16` pass the flags to the transformers Trainer (mixed precision on CUDA); "
        "the GLUE numbers above are CPU unless a table says otherwise."
    )
    return "\n".join(out)
