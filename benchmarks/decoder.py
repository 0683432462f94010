"""Instruction tuning on the embedded decoder (SmolLM2-135M-Instruct): SoRA against LoRA and AdaLoRA on chat versions
of three GLUE tasks and on plain text, a resumable runner over ``benchmarks/runner.py`` (run claims and records, the
command line, the machine), as ``benchmarks/glue.py`` is.

Data, built in the scratch folder (never in the repository) from the GLUE TSVs (``--data-dir``, default
``$GLUE_DIR``), read with ``sora.data.load_task``; one seeded subsample (``DATA_SEED``), the same for every run:

- chat records (``{"messages": [user, assistant]}``, ``PROMPTS``) with a one-word answer (``ANSWERS``): SST-2 (is
  the sentence's sentiment positive or negative: ``positive`` / ``negative``), RTE (does the premise entail the
  hypothesis: ``yes`` / ``no``), MRPC (do the two sentences mean the same: ``yes`` / ``no``);
- the plain-text task ``text``: SST-2 sentences as ``{"text"}`` records, from other rows than the chat records'
  and never a sentence that a chat record holds; its dev records are other SST-2 dev sentences than the chat ones.

Per task, ``Sizes.train`` (500) training and ``Sizes.validation`` (32) validation records from the GLUE train split
(disjoint rows), and ``Sizes.dev`` (100) dev records from the GLUE dev split: ``train.jsonl`` holds the 2000 training
records of the four tasks, shuffled; ``validation.jsonl`` their 128 validation records, interleaved task by task (the
Trainer's validation loss, which picks the kept checkpoint with more than one epoch, and metrics.json's: held-out train
rows, so nothing is selected on the dev records that are scored); ``dev_<task>.jsonl`` each task's dev records (the
scores). Rows are drawn in a seeded random order per task and split; skipped: SST-2 rows under ``MIN_SST2_WORDS`` words
(the train split's parse-tree phrases; the dev split holds whole sentences) and records longer than
``RECIPE["max_seq_length"]`` tokens with the chat template (long RTE pairs), so no record is truncated.

Rows (``ROWS``: label -> ``sora train`` settings), at seeds 0 1 2, every row of a seed before the next seed, after
the ``zero-shot`` row (the base model untuned). Every run trains with ``RECIPE`` at its method's default learning
rate (``sora.methods``): 1 epoch of the 2000 records at batch 8, 250 optimizer steps. Its exported
adapter is then loaded once and every dev file scored by ``score_tasks``, the code that scores the zero-shot row:
per task the loss per trained token (``sora.tasks.causal_lm.masked_loss``: the answer and its end-of-turn tokens,
every token of a text record) and its perplexity, and on the chat tasks greedy generations and their exact match.

Results: ``benchmarks/results/decoder/<label>_seed<seed>.json`` (and ``zero-shot.json``): the run's metrics.json
(validation loss, ``ranks``, ``nonzero_params``, ``train_seconds``), the per-task scores (``tasks``), optimizer steps
and seconds per step, the adapter file's size, the data summary, the exact ``sora train`` command, the machine and
the load average. A failed run is recorded under ``failed/`` and not retried (delete its file to retry). A run whose
JSON exists is skipped, so the same command continues an interrupted invocation; runs are claimed with lock files in
the scratch folder (``--scratch``, default ``/tmp/sora-bench/decoder``), so several workers may share them.
``--stop-at HH:MM`` (UTC) launches no new run after that time; ``--records`` and ``--rows`` make smaller runs (smoke
tests: into another ``--results`` folder).

CPU cost, measured on the 2-core development machine while two GLUE runs shared it: a training step takes about
9.5 ms of CPU per padded token at 1 torch thread (SoRA as LoRA), so about 6.5 s at batch 8 (about 700 tokens grouped
by length): about 27 minutes of training and 5 of scoring (the validation file twice, 400 dev records, 300 greedy
generations) per run, about 11 CPU-hours for the 21 runs and the zero-shot row, about 6 hours on two workers (two
invocations at once); an idle machine is faster.
``python benchmarks/build_report.py`` renders them (BENCHMARKS.md, "Instruction tuning on the embedded decoder").

``--front``: the size-accuracy front on this decoder instead of the rows (``FRONT_*``): per seed one
``sora schedule --task causal-lm --target-list 0.75,0.5,0.25,0.125`` run of the same data and recipe, a third of a
row's training per stage, each stage's adapter scored on every dev file, then LoRA r = 2 and 1 (r = 8 and 4 are the
rows ``lora`` and ``lora-r4``); results in ``benchmarks/results/decoder-front/`` (``sora-schedule_seed<seed>.json``:
the schedule's rows with their ``tasks`` scores; the zero-shot row again, as every invocation runs it first). On the
2-core machine beside two GLUE runs, a smoke run (``--seeds 0 --records 16 4 8``: 3 steps per stage) took 20 minutes:
the schedule 12 (about 1 minute of training and 1.5 of scoring per stage), each LoRA row 4. At full size a stage is
84 steps (about 9 minutes of training at 6.5 s per step), a seed's front about 4 hours of CPU: a GPU job.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import random
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, astuple, dataclass
from pathlib import Path
from typing import Any

import glue  # the GLUE experiments' allocations (PAPER, LEARNED) and seeds
import runner  # the shared runner: run claims, records, the machine, the command line

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "decoder"
FRONT_RESULTS = ROOT / "benchmarks" / "results" / "decoder-front"  # --front's results
DEFAULT_SCRATCH = "/tmp/sora-bench/decoder"
RUNNER = "python benchmarks/decoder.py"
EXPERIMENT = "decoder"  # the lock folder under <scratch>/locks/

CHAT_TASKS = ("sst2", "rte", "mrpc")
TEXT_TASK = "text"  # SST-2 sentences as plain text, scored by perplexity
TASKS = (*CHAT_TASKS, TEXT_TASK)
DATA_SEED = 0  # the subsample and the order of train.jsonl, the same for every run
MIN_SST2_WORDS = 5
# The user turn of each chat task (text_a, text_b: sora.data's columns) and its answer by class id (sora.data's order)
PROMPTS = {
    "sst2": "Is the sentiment of this sentence positive or negative? Answer with one word: positive or negative.\n\n"
    "Sentence: {a}",
    "rte": "Premise: {a}\nHypothesis: {b}\n\nDoes the premise entail the hypothesis? Answer with one word: yes or no.",
    "mrpc": "Sentence 1: {a}\nSentence 2: {b}\n\nDo these two sentences mean the same thing? Answer with one word: yes "
    "or no.",
}
ANSWERS = {"sst2": ("negative", "positive"), "rte": ("yes", "no"), "mrpc": ("no", "yes")}
TRAIN_FILE, VALIDATION_FILE, SUMMARY_FILE = "train.jsonl", "validation.jsonl", "summary.json"


@dataclass(frozen=True)
class Sizes:
    """Records per task: training and validation records from the GLUE train split, dev records from its dev split."""

    train: int = 500
    validation: int = 32
    dev: int = 100


# `sora train` settings of every run besides its row's: 1 epoch of 4 x 500 records at batch 8 = 250 optimizer steps
RECIPE: dict[str, Any] = {"epochs": 1.0, "batch_size": 8, "max_seq_length": 192}
SCORE_BATCH_SIZE = 32  # the dev losses' batches (the sums per token do not depend on it)
ZERO_SHOT = "zero-shot"
# label -> `sora train` settings; the method's own defaults otherwise (r 8, lora_alpha 16, the SoRA gate defaults)
ROWS: dict[str, dict[str, Any]] = {
    "lora": {"method": "lora"},
    "sora": {"method": "sora"},
    "adalora": {"method": "adalora"},
    # the paper's allocation at a budget (N(0, 1) gates, |g| top-up); a budgeted `sora train` defaults to the learned
    "sora-budget50": {"method": "sora", "target_ratio": 0.5, **glue.PAPER},
    "lora-r4": {"method": "lora", "r": 4},
    # LoRA r=4 at the update scale of SoRA's modules: alpha / r = 8 / 4 = 16 / 8 = SoRA's alpha / r_max
    "lora-r4-alpha8": {"method": "lora", "r": 4, "lora_alpha": 8},
    # the allocation the data chooses: constant gates, the contribution top-up (BENCHMARKS.md, Allocation)
    "sora-budget50-learned": {"method": "sora", "target_ratio": 0.5, **glue.LEARNED},
}
SEEDS = glue.SEEDS
# The front on the decoder (``--front``): per seed, one `sora schedule --target-list` run through GLUE's front sizes
# (75, 50, 25, 12.5% of the r_max=8 adapter), each stage a third of a row's training (as on GLUE: a stage is one of
# the three epochs of a sweep run), its adapter scored on every dev file as a row's is; then the LoRA sweep's ranks
# that ROWS lacks (r = 8 and 4 are the rows `lora` and `lora-r4`).
SCHEDULE = glue.FRONT_SCHEDULE["label"]
FRONT_EPOCHS_PER_STAGE = RECIPE["epochs"] / 3
FRONT_ROWS: dict[str, dict[str, Any]] = {"lora-r2": {"method": "lora", "r": 2}, "lora-r1": {"method": "lora", "r": 1}}
SCHEDULE_SETTINGS = {"method": "sora", **glue.FRONT_SCHEDULE["settings"]}  # its RECIPE "epochs": per stage instead


def run_name(label: str, seed: int | None) -> str:
    """``label_seedS``; the zero-shot row has no seed."""
    return label if seed is None else f"{label}_seed{seed}"


def dev_file(task: str) -> str:
    return f"dev_{task}.jsonl"


# ---------------------------------------------------------------------------------------------------------------
# data


def chat_record(task: str, row: dict[str, Any]) -> dict[str, Any]:
    """A GLUE row (``sora.data``'s ``text_a``, ``text_b``, class id ``label``) as a chat record, one-word answer."""
    prompt = PROMPTS[task].format(a=row["text_a"].strip(), b=row.get("text_b", "").strip())
    answer = ANSWERS[task][row["label"]]
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


def text_record(row: dict[str, Any]) -> dict[str, Any]:
    return {"text": row["text_a"].strip()}


def record_fits(tokenizer: Any, max_seq_length: int) -> Callable[[dict[str, Any]], bool]:
    """Whether a record encodes (``sora.tasks.causal_lm.encode_record``, as training reads it) to at most
    ``max_seq_length`` tokens, so that truncation cuts nothing."""
    from sora.tasks.causal_lm import encode_record

    def fits(record: dict[str, Any]) -> bool:
        return len(encode_record(record, tokenizer, sys.maxsize, "candidate").input_ids) <= max_seq_length  # whole

    return fits


def _shuffled(task: str, split: str, rows: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The rows in a random order seeded by ``DATA_SEED``, the task and the split; SST-2 phrases left out."""
    rows = list(rows)
    random.Random(f"{DATA_SEED}/{task}/{split}").shuffle(rows)
    return (r for r in rows if task != "sst2" or len(r["text_a"].split()) >= MIN_SST2_WORDS)


class _Draw:
    """Records taken in order from one task split's shuffled rows; rows whose record does not fit are skipped and
    counted (``too_long``)."""

    def __init__(self, rows: Iterator[dict[str, Any]], fits: Callable[[dict[str, Any]], bool], what: str) -> None:
        self.rows, self.fits, self.what = rows, fits, what
        self.too_long = 0

    def take(
        self, n: int, make: Callable[[dict[str, Any]], dict], skip: Callable[[dict], bool] | None = None
    ) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """The next ``n`` (row, record) pairs: rows that ``skip`` does not reject and whose record fits."""
        from sora.errors import SoraError

        taken = []
        while len(taken) < n:
            row = next(self.rows, None)
            if row is None:
                raise SoraError(f"{self.what}: only {len(taken)} of the {n} records asked for fit (too few rows)")
            if skip is not None and skip(row):
                continue
            record = make(row)
            if self.fits(record):
                taken.append((row, record))
            else:
                self.too_long += 1
        return taken


def _jsonl(records: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def build_data(
    data_dir: str | Path, folder: str | Path, fits: Callable[[dict[str, Any]], bool], sizes: Sizes = Sizes()
) -> dict[str, Any]:
    """Write ``train.jsonl``, ``validation.jsonl``, ``dev_<task>.jsonl`` and ``summary.json`` (what was drawn) to
    ``folder`` from the GLUE TSVs under ``data_dir`` (the module docstring says what is drawn); return the summary.
    The files depend on ``DATA_SEED``, ``sizes`` and ``fits`` alone: every worker writes the same bytes."""
    from sora import _io
    from sora.data import load_task

    drawn: dict[str, dict[str, list[dict]]] = {"train": {}, "validation": {}, "dev": {}}
    too_long: Counter[str] = Counter()
    for task in CHAT_TASKS:
        splits = load_task(task, data_dir).splits
        for glue_split, ours in (("train", ("train", "validation")), ("validation", ("dev",))):
            draw = _Draw(_shuffled(task, glue_split, splits[glue_split].to_list()), fits, f"{task} {glue_split}")
            chat = {split: draw.take(getattr(sizes, split), functools.partial(chat_record, task)) for split in ours}
            for split, pairs in chat.items():
                drawn[split][task] = [record for _, record in pairs]
            if task == "sst2":  # the text task: the next rows, never a sentence of a chat record
                used = {row["text_a"].strip() for pairs in chat.values() for row, _ in pairs}
                for split in ours:
                    pairs = draw.take(
                        getattr(sizes, split), text_record, lambda row, used=used: row["text_a"].strip() in used
                    )
                    drawn[split][TEXT_TASK] = [record for _, record in pairs]
            too_long[task] += draw.too_long
    folder = Path(folder)
    train = [record for task in TASKS for record in drawn["train"][task]]
    random.Random(DATA_SEED).shuffle(train)
    validation = [r for group in itertools.zip_longest(*(drawn["validation"][t] for t in TASKS)) for r in group if r]
    _io.write_text(folder / TRAIN_FILE, _jsonl(train))
    _io.write_text(folder / VALIDATION_FILE, _jsonl(validation))
    for task in TASKS:
        _io.write_text(folder / dev_file(task), _jsonl(drawn["dev"][task]))
    majority = {}
    for task in CHAT_TASKS:
        answers = Counter(r["messages"][-1]["content"] for r in drawn["dev"][task])
        answer, count = answers.most_common(1)[0]
        majority[task] = {"answer": answer, "share": count / sum(answers.values())}
    summary = {
        "seed": DATA_SEED,
        "sizes": asdict(sizes),
        "min_sst2_words": MIN_SST2_WORDS,
        "records": {split: {task: len(tasks[task]) for task in TASKS} for split, tasks in drawn.items()},
        "too_long": dict(too_long),
        "dev_majority": majority,
    }
    _io.write_json(folder / SUMMARY_FILE, summary)
    return summary


def build_embedded_data(
    data_dir: str | Path, folder: str | Path, sizes: Sizes = Sizes(), max_seq_length: int = RECIPE["max_seq_length"]
) -> tuple[dict[str, Any], Any]:
    """``build_data`` with the embedded decoder's tokenizer deciding what fits in ``max_seq_length`` tokens (the
    decoder is converted first if it is not cached); the summary, and that tokenizer."""
    from sora.tasks import gguf_cache
    from sora.tasks.causal_lm import causal_tokenizer

    tokenizer = causal_tokenizer(gguf_cache.default_model())
    return build_data(data_dir, folder, record_fits(tokenizer, max_seq_length), sizes), tokenizer


# ---------------------------------------------------------------------------------------------------------------
# scores


def score_tasks(
    model: Any, tokenizer: Any, dev_files: dict[str, Path], max_seq_length: int, batch_size: int = SCORE_BATCH_SIZE
) -> dict[str, dict[str, Any]]:
    """Per task (``dev_files``: task -> JSONL file): ``loss`` per trained token and ``perplexity``
    (``causal_lm.masked_loss``); for prompted records (chat) also ``exact_match``, the share of greedy generations
    (``causal_lm.generate``: as many tokens as the reference span) equal to the reference after stripping, and
    ``answers``, the most frequent generations with their counts."""
    from sora.tasks.causal_lm import generate, masked_loss, read_examples, to_dataset

    scores = {}
    for task, path in dev_files.items():
        examples = read_examples(path, tokenizer, max_seq_length)
        scores[task] = masked_loss(model, tokenizer, to_dataset(examples), batch_size)
        prompts = [e for e in examples if e.prompt_length is not None]
        if prompts:
            rows = generate(model, tokenizer, prompts)
            scores[task]["exact_match"] = sum(r["exact_match"] for r in rows) / len(rows)
            scores[task]["answers"] = dict(Counter(r["generation"].strip() for r in rows).most_common(5))
    return scores


# ---------------------------------------------------------------------------------------------------------------
# runs


class Runner(runner.Runner):
    """The shared runner (scratch folder, ``--stop-at`` budget, threads, run claims and records) with this
    benchmark's runs: the zero-shot row and the tuned rows, each scored on the dev files."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.results = Path(args.results or (FRONT_RESULTS if args.front else RESULTS))
        self.sizes = Sizes(*args.records)
        self.data = self.scratch / "data" / "-".join(map(str, astuple(self.sizes)))
        self.summary: dict[str, Any] = {}

    def prepare_data(self) -> None:
        """Build the data files with the embedded decoder's tokenizer deciding what fits."""
        glue_dir = runner.require_glue_dir(self.data_dir)
        self.summary = {**build_embedded_data(glue_dir, self.data, self.sizes)[0], **RECIPE}

    def dev_files(self) -> dict[str, Path]:
        return {task: self.data / dev_file(task) for task in TASKS}

    def config(self, label: str, seed: int, out: Path) -> Any:
        from sora.train import TrainConfig

        settings = {**RECIPE, **{**ROWS, **FRONT_ROWS, SCHEDULE: SCHEDULE_SETTINGS}[label]}
        return TrainConfig(
            task="causal-lm", output_dir=str(out), train_file=str(self.data / TRAIN_FILE),
            validation_file=str(self.data / VALIDATION_FILE), seed=seed, **settings,
        )  # fmt: skip

    def schedule_row(self, seed: int) -> bool:
        """The front's schedule run of ``seed`` (resumable per stage), each stage's adapter scored on the dev files."""
        name = run_name(SCHEDULE, seed)
        cfg = self.config(SCHEDULE, seed, self.scratch / "runs" / name)
        targets = list(glue.FRONT_TARGETS)
        fields = {"variant": SCHEDULE, "seed": seed, "runner": f"{RUNNER} --front", "data": self.summary}
        options = " --target-list " + ",".join(f"{t:g}" for t in targets)
        return self.schedule_run(
            "decoder", name, self.results / f"{name}.json", cfg, [0.5] * len(targets), FRONT_EPOCHS_PER_STAGE,
            options, fields, targets, score_stage=lambda adapter: {"tasks": self.scores(adapter, cfg.max_seq_length)},
        )  # fmt: skip

    def scores(self, adapter: Path, max_seq_length: int) -> dict[str, dict[str, Any]]:
        """An exported adapter, loaded once as ``causal_lm.evaluate`` loads it, scored on every dev file."""
        from sora.run_folder import load_exported
        from sora.tasks.causal_lm import causal_tokenizer, load_model

        tokenizer = causal_tokenizer(str(adapter))
        model = load_exported(adapter, None, lambda name: load_model(name, tokenizer))
        return score_tasks(model, tokenizer, self.dev_files(), max_seq_length)

    def run_row(self, label: str, seed: int | None) -> bool:
        """Whether the run has its result (or a recorded failure: a failure is a result here, not retried), running
        it now if no worker has: False when it is not run (the budget is spent, or another worker holds it)."""
        name = run_name(label, seed)
        out = self.scratch / "runs" / name

        def setup() -> runner.Run:
            cfg = None if label == ZERO_SHOT else self.config(label, seed, out)
            fields = {
                "variant": label,  # metrics' "method" is the `sora train --method`
                "seed": seed,
                "command": None if cfg is None else runner.command_line(cfg, self.threads),
                "runner": RUNNER,
                "data": self.summary,
            }
            work = self.zero_shot if cfg is None else functools.partial(self.tuned, cfg)
            return runner.Run(fields, work, lambda: fields, _scores_line)

        job = runner.Job(
            EXPERIMENT, name, self.results / f"{name}.json", self.results / "failed" / f"{name}.json", out, setup
        )
        return self.attempt(job) is not None

    def zero_shot(self) -> dict[str, Any]:
        """The untuned base model scored as the tuned runs are."""
        from sora.tasks import gguf_cache
        from sora.tasks.causal_lm import causal_tokenizer, load_model

        name = gguf_cache.default_model()
        tokenizer = causal_tokenizer(name)
        model = load_model(name, tokenizer)
        return {"model": name, "tasks": score_tasks(model, tokenizer, self.dev_files(), RECIPE["max_seq_length"])}

    def tuned(self, cfg: Any) -> dict[str, Any]:
        """``sora train`` with ``cfg``, then its exported adapter loaded once (as ``causal_lm.evaluate`` loads it)
        and scored on every dev file."""
        from sora.analysis import read_train_log
        from sora.train import train

        metrics = train(cfg)
        out = Path(cfg.output_dir)
        adapter = out / "adapter"
        steps = read_train_log(out / "train_log.jsonl")[-1]["step"]  # the Trainer's last row: its global step
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        return {
            **metrics,
            "tasks": self.scores(adapter, cfg.max_seq_length),
            "steps": steps,
            "seconds_per_step": round(metrics["seconds_per_epoch"] * cfg.epochs / steps, 4),
            "adapter_bytes": (adapter / "adapter_model.safetensors").stat().st_size,
        }


def _scores_line(result: dict[str, Any]) -> str:
    return ", ".join(f"{task} {_scores_text(s)}" for task, s in result["tasks"].items())


def _scores_text(scores: dict[str, Any]) -> str:
    exact = f", exact match {scores['exact_match']:.2f}" if "exact_match" in scores else ""
    return f"loss {scores['loss']:.3f}{exact}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS), help="default: all, in order")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="default: 0 1 2")
    parser.add_argument(
        "--records", type=int, nargs=3, metavar=("TRAIN", "VALIDATION", "DEV"), default=list(astuple(Sizes())),
        help="records per task (default: 500 32 100); other sizes belong in another --results folder",
    )  # fmt: skip
    parser.add_argument(
        "--results", default=None, help="result folder (default: benchmarks/results/decoder; --front: decoder-front)"
    )
    parser.add_argument(
        "--front", action="store_true", help="the front instead of the rows: per seed the schedule, then LoRA r=2, 1"
    )
    runner.add_runner_options(parser, DEFAULT_SCRATCH)
    args = parser.parse_args(argv)
    runner.quiet_threads(args.threads)
    worker = Runner(args)
    worker.prepare_data()
    print(f"[{runner.now()}] data in {worker.data}: {json.dumps(worker.summary['records'])}", flush=True)

    def step() -> bool:
        complete = worker.run_row(ZERO_SHOT, None)
        for seed in args.seeds:
            if args.front:
                complete &= worker.schedule_row(seed)
            for label in FRONT_ROWS if args.front else args.rows:
                complete &= worker.run_row(label, seed)
        return complete

    done = runner.until_done(step, worker)
    print(f"[{runner.now()}] {EXPERIMENT}: {'complete' if done else 'stopped (budget)'}; ran {worker.ran} runs; "
          f"failed: {worker.failed or 'none'}", flush=True)  # fmt: skip
    return 0 if done and not worker.failed else 1


if __name__ == "__main__":
    sys.exit(main())
