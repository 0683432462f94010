"""## GPU path: benchmarks/overhead.py's CUDA runs where there are any, what stands for them where not."""

from __future__ import annotations

from ..load import RESULTS, Results
from .overhead import overhead_text


def render(res: Results) -> str:
    out = ["\n## GPU path\n"]
    gpu_overhead = sorted(RESULTS.glob("overhead_cuda*.json"))
    out.extend(overhead_text(path) + "\n" for path in gpu_overhead)
    if not gpu_overhead:
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
