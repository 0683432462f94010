"""A real llama.cpp run of a SoRA adapter (through ``llama-cpp-python``), against PEFT on the same prompts.

Result: ``benchmarks/results/llama_cpp_adapter.json`` (docs/servers.md reads it). Not part of CI:
``llama-cpp-python`` builds llama.cpp from source (10-30 minutes on 2 cores), and the comparison wants llama.cpp's
own converter, ``convert_lora_to_gguf.py`` (with the ``conversion`` package beside it), which its source
archive holds::

    pip download llama-cpp-python==0.3.36 --no-deps --no-binary :all: -d /tmp/llamacpp
    pip install /tmp/llamacpp/llama_cpp_python-0.3.36.tar.gz        # the build
    tar xzf /tmp/llamacpp/llama_cpp_python-0.3.36.tar.gz -C /tmp/llamacpp
    python benchmarks/llama_cpp_adapter.py \\
        --converter /tmp/llamacpp/llama_cpp_python-0.3.36/vendor/llama.cpp/convert_lora_to_gguf.py \\
        --output benchmarks/results/llama_cpp_adapter.json

What it does:

1. A heavily pruned SoRA run on the embedded SmolLM2-135M-Instruct (``--target-ratio``, default 0.4) on a small
   version of ``benchmarks/decoder.py``'s chat data (``--records`` per task), one seed.
2. Its adapter in three GGUF files: ``sora export --gguf`` (per-module ranks, ``adapter.lora.alpha`` 0 and each
   module's scale folded into B), llama.cpp's converter on ``sora export --uniform-rank``'s padded adapter, and the
   same converter on the plain per-module-rank adapter (the converter stores one ``lora_alpha``, and llama.cpp scales
   each module by ``alpha / rank`` of its own tensors, so a module pruned to ``r_i`` comes out ``r / r_i`` times too
   strong: ``docs/servers.md``).
3. The base model in llama.cpp is the embedded ``SmolLM2-135M-Instruct.Q4_1.gguf`` itself; in PEFT, its dequantized
   copy (``sora.tasks.gguf_cache``): the same weights, but llama.cpp multiplies Q4_1 blocks with 8-bit-quantized
   activations, so the two bases differ by that rounding (the noise floor, measured).
4. On the chat prompts of the dev files: the last prompt position's logits with and without the adapter, in PEFT and
   in llama.cpp for each GGUF file. The adapter's effect is ``adapted - base`` in each; reported per file: the norm
   ratio ``|effect_llama| / |effect_peft|`` and their cosine (median and range over the prompts), against the noise
   floor ``|base_llama - base_peft| / |effect_peft|``; and the greedy answers (as many tokens as the reference):
   their agreement with PEFT's and their exact match.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import decoder  # the chat data of the decoder benchmark
import runner  # the machine, the command line, the GLUE folder option

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SCRATCH = "/tmp/sora-bench/llama_cpp"
# (this script is not called llama_cpp.py: on sys.path first, it would hide the llama_cpp package)


def train_run(args: argparse.Namespace, data: Path, out: Path) -> dict[str, Any]:
    """The heavily pruned SoRA run (its metrics.json), trained unless ``out`` holds it already."""
    from sora.train import TrainConfig, train

    if (out / "metrics.json").is_file():
        return json.loads((out / "metrics.json").read_text())
    cfg = TrainConfig(
        task="causal-lm", output_dir=str(out), method="sora", train_file=str(data / decoder.TRAIN_FILE),
        validation_file=str(data / decoder.VALIDATION_FILE), target_ratio=args.target_ratio, seed=0,
        epochs=args.epochs, batch_size=args.batch_size, max_seq_length=decoder.RECIPE["max_seq_length"],
    )  # fmt: skip
    print(f"training: {runner.command_line(cfg, args.threads)}", flush=True)
    return train(cfg)


def convert(converter: Path, adapter: Path, base: str, output: Path) -> Path:
    """llama.cpp's ``convert_lora_to_gguf.py`` on a PEFT adapter folder (f32, the base's config from ``base``)."""
    command = [sys.executable, str(converter), str(adapter), "--base", base, "--outfile", str(output)]
    done = subprocess.run([*command, "--outtype", "f32"], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{converter.name} failed on {adapter}:\n{done.stderr[-3000:]}")
    return output


def peft_side(run: Path, base_name: str, tokenizer: Any, prompts: list) -> dict[str, list]:
    """PEFT's last-position logits of every prompt without and with the adapter, and its greedy answers."""
    import torch

    from sora.run_folder import load_exported
    from sora.tasks.causal_lm import generate, load_model

    @torch.no_grad()
    def last_logits(model: torch.nn.Module) -> list:
        model.eval()
        return [model(input_ids=torch.tensor([p.input_ids[: p.prompt_length]])).logits[0, -1].double() for p in prompts]

    base = load_model(base_name, tokenizer)
    adapted = load_exported(run / "adapter", None, lambda name: load_model(name, tokenizer))
    return {
        "base": last_logits(base),
        "adapted": last_logits(adapted),
        "answers": [r["generation"].strip() for r in generate(adapted, tokenizer, prompts)],
    }


def llama_side(model_path: Path, lora_path: Path | None, prompts: list, threads: int) -> dict[str, list]:
    """llama.cpp's last-position logits of every prompt (the base GGUF, with ``lora_path`` if given) and its greedy
    answers, from the same token ids as PEFT's."""
    import numpy as np
    import torch
    from llama_cpp import Llama

    llm = Llama(  # logits_all: without it, eval() keeps no logits in `scores` (llama-cpp-python 0.3)
        model_path=str(model_path), lora_path=None if lora_path is None else str(lora_path), n_ctx=512,
        n_threads=threads, seed=0, verbose=False, logits_all=True,
    )  # fmt: skip
    logits, answers = [], []
    for p in prompts:
        tokens = p.input_ids[: p.prompt_length]
        llm.reset()
        llm.eval(tokens)
        logits.append(torch.from_numpy(np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)))
        if not logits[-1].any():
            raise SystemExit(f"llama.cpp gave no logits for a prompt of {len(tokens)} tokens")
        llm.reset()
        out = llm.create_completion(tokens, max_tokens=p.reference_tokens, temperature=0.0, top_k=1)
        answers.append(out["choices"][0]["text"].strip())
    return {"logits": logits, "answers": answers}


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def compare(peft: dict[str, list], base: dict[str, list], variant: dict[str, list], references: list[str]):
    """One GGUF file's adapter effect against PEFT's: norm ratio, cosine, answers."""
    import torch

    ratios, cosines, floors = [], [], []
    for pb, pa, lb, la in zip(peft["base"], peft["adapted"], base["logits"], variant["logits"], strict=True):
        n = min(pb.numel(), lb.numel())  # a padded vocabulary row in one of them is no token
        effect_peft, effect_llama = (pa - pb)[:n], (la - lb)[:n]
        ratios.append(float(effect_llama.norm() / effect_peft.norm()))
        cosines.append(float(torch.nn.functional.cosine_similarity(effect_llama, effect_peft, dim=0)))
        floors.append(float((lb[:n] - pb[:n]).norm() / effect_peft.norm()))
    return {
        "norm_ratio": _spread(ratios),
        "cosine": _spread(cosines),
        "noise_floor": _spread(floors),
        "answers_agree_with_peft": _share_equal(variant["answers"], peft["answers"]),
        "exact_match": _share_equal(variant["answers"], [r.strip() for r in references]),
    }


def _share_equal(answers: list[str], others: list[str]) -> float:
    return sum(a == b for a, b in zip(answers, others, strict=True)) / len(answers)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--converter", required=True, type=Path, help="llama.cpp's convert_lora_to_gguf.py")
    runner.add_data_option(parser)
    parser.add_argument("--scratch", type=Path, default=Path(DEFAULT_SCRATCH))
    parser.add_argument("--target-ratio", type=float, default=0.4)
    parser.add_argument("--records", type=int, nargs=3, default=[160, 16, 16], metavar=("TRAIN", "VALIDATION", "DEV"))
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, help="write the numbers to this JSON file")
    args = parser.parse_args(argv)
    if not args.converter.is_file():
        raise SystemExit(f"{args.converter}: no such file (llama.cpp's convert_lora_to_gguf.py)")
    runner.quiet_threads(args.threads)
    import llama_cpp
    import torch

    from sora import _io
    from sora.export import uniform_rank
    from sora.gguf import export_gguf
    from sora.tasks import gguf_cache
    from sora.tasks.causal_lm import read_examples

    started = time.perf_counter()
    base_name = gguf_cache.default_model()
    data = args.scratch / "data"
    glue_dir = runner.require_glue_dir(args.data_dir)
    summary, tokenizer = decoder.build_embedded_data(glue_dir, data, decoder.Sizes(*args.records))
    run = args.scratch / "run"
    metrics = train_run(args, data, run)
    uniform = uniform_rank(run, args.scratch / "adapter-uniform-rank")
    files = {  # the three GGUF files of the docstring's step 2
        "sora-gguf": export_gguf(run, args.scratch / "sora-gguf.gguf"),
        **{
            name: convert(args.converter, adapter, base_name, args.scratch / f"{name}.gguf")
            for name, adapter in (("uniform-rank-converted", uniform), ("per-module-rank-converted", run / "adapter"))
        },
    }
    prompts, references = [], []
    for task in decoder.CHAT_TASKS:
        examples = read_examples(data / decoder.dev_file(task), tokenizer, decoder.RECIPE["max_seq_length"])
        prompts += examples
        references += [e.reference for e in examples]
    peft = peft_side(run, base_name, tokenizer, prompts)
    base = llama_side(gguf_cache.embedded_gguf(), None, prompts, args.threads)
    results = {}
    for variant, path in files.items():
        results[variant] = compare(
            peft, base, llama_side(gguf_cache.embedded_gguf(), path, prompts, args.threads), references
        )
        print(f"{variant}: {json.dumps(results[variant])}", flush=True)
    ranks = list(metrics["ranks"].values())
    result = {
        "benchmark": "llama_cpp_adapter",
        "command": " ".join(["python benchmarks/llama_cpp_adapter.py", *(argv if argv is not None else sys.argv[1:])]),
        "what": __doc__.split("\n\n")[0],
        "run": {
            "target_ratio": args.target_ratio,
            "nonzero_params": metrics["nonzero_params"],
            "eval": metrics["eval"],
            "ranks": {
                "min": min(ranks),
                "max": max(ranks),
                "modules": len(ranks),
                "r_max": metrics["hyperparameters"]["r"],
            },
            "data": summary,
        },
        "prompts": len(prompts),
        "peft": {
            "exact_match": _share_equal(peft["answers"], [r.strip() for r in references]),
        },
        "variants": results,
        "versions": {"llama_cpp_python": llama_cpp.__version__, "torch": torch.__version__},
        "machine": runner.machine(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    if args.output:
        _io.write_json(args.output, result)
        print(f"wrote {args.output}")
    return result


if __name__ == "__main__":
    main()
