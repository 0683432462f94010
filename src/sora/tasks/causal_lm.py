"""The causal-LM task family: instruction tuning of decoder models (``sora train --task causal-lm``).

Records (JSONL or CSV files, or a ``datasets`` dataset: ``--dataset``, :mod:`sora.dataset_input`), each in one
of three shapes:

- ``{"prompt", "completion"}``: the loss covers the completion and the EOS token after it;
- ``{"messages": [{"role", "content"}, ...]}``: rendered with the tokenizer's chat template; the loss covers what
  the template writes for each assistant message (its end-of-turn tokens included);
- ``{"text"}``: the loss covers every token.

Every other token gets label -100, which the loss ignores. Sequences are cut at ``max_seq_length`` tokens and
batched with dynamic padding, grouped by length (the shared loop's sampler). Scores: the loss per trainable token
(``loss``) and ``perplexity = exp(loss)`` on the validation file, with the same masking; with ``generate_eval`` also
greedy generations for the first N validation prompts and their ``exact_match`` against the reference completion.
This module holds the family's data reading, masking, collator and metrics; the training loop is ``sora.train``.
The default model is the embedded SmolLM2-135M-Instruct, and ``--model`` also takes a ``.gguf`` file: both are
converted once into a cached safetensors folder (:mod:`sora.tasks.gguf_cache`), which the adapter names as its base.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, DatasetDict
from jinja2 import TemplateError
from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq

from .. import _io, dataset_input, quant
from ..data import records, subsample
from ..errors import SoraError, first_line
from ..methods import get_method, names
from ..run_config import TrainConfig
from ..run_folder import is_main_process, load_exported, saved_task
from . import gguf_cache
from .base import EvalOptions, LoadedTask, TaskFamily, finish_model, load_tokenizer

TASK = "causal-lm"
IGNORE = -100  # the label of a token outside the loss
GENERATIONS_FILE = "generations.jsonl"


@dataclass(frozen=True)
class CausalLMSpec:
    """What the run folder records about a causal-LM task (``sora_task.json``); lower ``loss`` is better."""

    name: str = TASK
    primary_metric: str = "loss"
    validation_splits: tuple[str, ...] = ("validation",)


@dataclass(frozen=True)
class Example:
    """One encoded record: tokens, labels (-100 outside the loss) and, for a prompted record, what to generate from.

    ``prompt_length`` is the number of tokens before the last trained span (None for ``text`` records), and
    ``reference`` the text that span should hold (the completion, or the last assistant message).
    """

    where: str
    input_ids: list[int]
    labels: list[int]
    prompt_length: int | None = None
    reference: str | None = None

    @property
    def reference_tokens(self) -> int:
        """How many tokens the reference span has (at least one): as many as a greedy generation is given."""
        return max(sum(1 for label in self.labels[self.prompt_length :] if label != IGNORE), 1)


@dataclass
class CausalLMData:
    """A loaded causal-LM task: the encoded splits, the validation prompts, and where generations go."""

    spec: CausalLMSpec
    splits: DatasetDict
    prompts: list[Example]
    generate_eval: int | None = None
    generations_file: Path | None = None

    @property
    def validation_splits(self) -> tuple[str, ...]:
        return self.spec.validation_splits


# ---------------------------------------------------------------------------------------------------------------
# records -> tokens and labels


def encode_record(record: dict[str, Any], tokenizer: Any, max_seq_length: int, where: str) -> Example:
    """Tokens and masked labels of one record; ``where`` (``file:line``) opens every error message."""
    if "messages" in record:
        example = _encode_chat(record["messages"], tokenizer, where)
    elif "prompt" in record or "completion" in record:
        example = _encode_prompt_completion(record, tokenizer, where)
    elif "text" in record:
        text = _text(record, "text", where)
        ids = tokenizer(text)["input_ids"] + [_eos(tokenizer)]
        example = Example(where, ids, list(ids))
    else:
        fields = ", ".join(map(str, record)) or "none"
        raise SoraError(f"{where}: expected fields prompt and completion, messages, or text (fields: {fields})")
    labels = example.labels[:max_seq_length]
    if all(label == IGNORE for label in labels[1:]):  # the first token is never predicted
        raise SoraError(
            f"{where}: no trainable token left after truncation to {max_seq_length} tokens "
            "(raise --max-seq-length or shorten the prompt)"
        )
    return Example(where, example.input_ids[:max_seq_length], labels, example.prompt_length, example.reference)


def _text(record: dict[str, Any], field: str, where: str) -> str:
    if field not in record:
        raise SoraError(f"{where}: no field {field!r} (fields: {', '.join(map(str, record))})")
    value = record[field]
    if not isinstance(value, str):
        raise SoraError(f"{where}: field {field!r} holds {type(value).__name__}, expected text")
    if field != "prompt" and not value.strip():
        raise SoraError(f"{where}: field {field!r} is empty")
    return value


def _eos(tokenizer: Any) -> int:
    if tokenizer.eos_token_id is None:
        raise SoraError("the tokenizer has no EOS token: completions cannot end")
    return tokenizer.eos_token_id


def _encode_prompt_completion(record: dict[str, Any], tokenizer: Any, where: str) -> Example:
    prompt, completion = _text(record, "prompt", where), _text(record, "completion", where)
    prompt_ids = tokenizer(prompt)["input_ids"]  # with BOS where the tokenizer adds one
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [_eos(tokenizer)]
    ids = prompt_ids + completion_ids
    return Example(where, ids, [IGNORE] * len(prompt_ids) + completion_ids, len(prompt_ids), completion)


def _encode_chat(messages: Any, tokenizer: Any, where: str) -> Example:
    """Render ``messages`` with the chat template; train the characters each assistant message adds.

    An assistant turn's span runs from the end of the conversation before it rendered with the generation prompt to
    the end of the conversation up to it; a token is trained when it starts inside a span.
    """
    if not (isinstance(messages, list) and messages and all(_is_message(m) for m in messages)):
        raise SoraError(f"{where}: messages must be a non-empty list of {{role, content}} objects with text values")
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not turns or any(not messages[i]["content"].strip() for i in turns):
        raise SoraError(f"{where}: messages need at least one assistant message, and none may be empty")
    if not getattr(tokenizer, "chat_template", None):
        raise SoraError(f"{where}: messages need a chat template, and this tokenizer has none (use prompt/completion)")

    def render(upto: int, generation_prompt: bool) -> str:
        try:
            return tokenizer.apply_chat_template(
                messages[:upto], tokenize=False, add_generation_prompt=generation_prompt
            )
        except (TemplateError, ValueError, TypeError) as e:  # e.g. a role order the template refuses
            raise SoraError(f"{where}: the chat template fails on these messages: {first_line(e)}") from None

    text = render(len(messages), False)
    spans = []
    for i in turns:
        start, end = render(i, True), render(i + 1, False)
        if not (text.startswith(end) and end.startswith(start)):
            raise SoraError(f"{where}: the chat template does not render a conversation as a prefix of a longer one")
        spans.append((len(start), len(end)))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    labels = [t if any(a <= s < b for a, b in spans) else IGNORE for t, (s, _) in zip(ids, offsets, strict=True)]
    prompt_length = sum(1 for s, _ in offsets if s < spans[-1][0])
    return Example(where, ids, labels, prompt_length, messages[turns[-1]]["content"])


def _is_message(m: Any) -> bool:
    return isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)


def read_examples(path: str | Path, tokenizer: Any, max_seq_length: int) -> list[Example]:
    """Every record of a JSONL or CSV file, encoded; a bad record is a SoraError naming ``file:line``."""
    path = Path(path)
    if path.suffix.lower() not in (".jsonl", ".json", ".csv"):
        raise SoraError(f"{path}: unknown file type {path.suffix!r}; expected .jsonl, .json (JSON Lines) or .csv")
    examples = [encode_record(r, tokenizer, max_seq_length, f"{path}:{line}") for line, r in records(path, None)]
    if not examples:
        raise SoraError(f"{path}: no data rows")
    return examples


def dataset_examples(name: str, config: str | None, split: str, tokenizer: Any, max_seq_length: int) -> list[Example]:
    """Every row of the split ``split`` of the dataset ``name`` (:mod:`sora.dataset_input`), encoded. Its columns
    must hold a record shape (prompt and completion, messages, or text); a row is a record without its null fields,
    and a bad one is a SoraError naming ``name[split]:index``."""
    dataset = dataset_input.load_split(name, config, split)
    where = dataset_input.where(name, split)
    columns = set(dataset.column_names)
    if not any(set(shape) <= columns for shape in _SHAPES):
        raise SoraError(
            f"{where}: columns found: {', '.join(dataset.column_names) or 'none'}; "
            "expected: prompt and completion, messages, or text"
        )
    examples = [encode_record(r, tokenizer, max_seq_length, f"{where}:{i}") for i, r in dataset_input.rows(dataset)]
    if not examples:
        raise SoraError(f"{where}: no data rows")
    return examples


_SHAPES = (("prompt", "completion"), ("messages",), ("text",))  # the columns of each record shape


def to_dataset(examples: list[Example]) -> Dataset:
    """The examples as the Trainer's columns: ``input_ids``, ``attention_mask``, ``labels``."""
    return Dataset.from_dict(
        {
            "input_ids": [e.input_ids for e in examples],
            "attention_mask": [[1] * len(e.input_ids) for e in examples],
            "labels": [e.labels for e in examples],
        }
    )


def collator(tokenizer: Any) -> DataCollatorForSeq2Seq:
    """Dynamic padding: pad tokens, attention mask 0 and label -100 on the right."""
    return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE)


# ---------------------------------------------------------------------------------------------------------------
# models and inputs


def load_model(name: str, tokenizer: Any, load_in_4bit: bool = False) -> torch.nn.Module:
    """A pretrained decoder with an LM head (a local folder, a hub name, or a ``.gguf`` file: its cached conversion,
    see :mod:`sora.tasks.gguf_cache`), from safetensors weights only. ``load_in_4bit``: its linear layers in NF4
    (:mod:`sora.quant`), the LM head and tied embeddings in full precision (transformers' default skips)."""
    extra = quant.load_kwargs() if load_in_4bit else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf_cache.resolve(name), use_safetensors=True, **extra)
    except (OSError, ValueError, KeyError) as e:
        raise SoraError(f"cannot load model {name!r}: {first_line(e)}") from None
    return finish_model(model, tokenizer, load_in_4bit)


def causal_tokenizer(name: str) -> Any:
    """The tokenizer of a decoder (a model or adapter folder, a hub name, a ``.gguf`` file), padding on the right."""
    tokenizer = load_tokenizer(gguf_cache.resolve(name))
    tokenizer.padding_side = "right"  # positions count from the first token; labels pad on the same side
    return tokenizer


def load(cfg: TrainConfig) -> LoadedTask:
    """The data, tokenizer, training set, dev split and model of a ``causal-lm`` run."""
    if not get_method(cfg.method).decoders:
        raise SoraError(f"task {TASK} trains with {', '.join(names('decoders'))}, not {cfg.method!r}")
    if cfg.data_dir is not None or cfg.text_columns is not None:
        raise SoraError(f"--data-dir and --text-columns are for classification tasks, not {TASK}")
    if cfg.dataset is None and (cfg.train_file is None or cfg.validation_file is None):
        raise SoraError(f"task {TASK} needs --train-file and --validation-file (JSONL or CSV), or --dataset")
    name = gguf_cache.resolve(cfg.model)  # a .gguf file: its converted folder, which the adapter names as its base
    tokenizer = causal_tokenizer(name)
    if cfg.dataset is not None:
        train_examples, dev_examples = (
            dataset_examples(cfg.dataset, cfg.dataset_config, split, tokenizer, cfg.max_seq_length)
            for split in (cfg.train_split, cfg.validation_split)
        )
        dev_source = dataset_input.where(cfg.dataset, cfg.validation_split)
    else:
        train_examples = read_examples(cfg.train_file, tokenizer, cfg.max_seq_length)
        dev_examples = read_examples(cfg.validation_file, tokenizer, cfg.max_seq_length)
        dev_source = cfg.validation_file
    prompts = [e for e in dev_examples if e.prompt_length is not None]
    if cfg.generate_eval and not prompts:
        raise SoraError(f"{dev_source}: --generate-eval needs prompt/completion or messages records")
    data = CausalLMData(
        CausalLMSpec(),
        DatasetDict({"train": to_dataset(train_examples), "validation": to_dataset(dev_examples)}),
        prompts,
        cfg.generate_eval,
        Path(cfg.output_dir) / GENERATIONS_FILE,
    )
    train_set = subsample(data.splits["train"], cfg.max_train_samples, cfg.seed)
    dev = {"validation": subsample(data.splits["validation"], cfg.max_eval_samples, cfg.seed)}
    return LoadedTask(data, tokenizer, train_set, dev, load_model(name, tokenizer, cfg.load_in_4bit))


# ---------------------------------------------------------------------------------------------------------------
# scores


@torch.no_grad()
def masked_loss(model: torch.nn.Module, tokenizer: Any, dataset: Dataset, batch_size: int) -> dict[str, float]:
    """``loss``: the mean negative log-likelihood per trainable token; ``perplexity``: ``exp(loss)``."""
    model.eval()
    device = next(model.parameters()).device
    pad = collator(tokenizer)
    total, count = 0.0, 0
    for start in range(0, len(dataset), batch_size):
        batch = pad([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        labels = batch["labels"][:, 1:]
        total += torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE, reduction="sum"
        ).item()
        count += int((labels != IGNORE).sum())
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0))}


def unigram_baseline(
    spec: CausalLMSpec, train_labels: list[list[int]], dev_labels: list[list[int]], split: str
) -> dict[str, float]:
    """The scores of a constant prediction: every trained dev token predicted by the trained-token frequencies of the
    training set (add-one smoothed over the token ids either set trains)."""
    counts = Counter(t for labels in train_labels for t in labels[1:] if t != IGNORE)
    targets = [t for labels in dev_labels for t in labels[1:] if t != IGNORE]
    vocabulary = set(counts) | set(targets)
    total = sum(counts.values()) + len(vocabulary)
    loss = -sum(math.log((counts[t] + 1) / total) for t in targets) / len(targets)
    return {"loss": loss, "perplexity": math.exp(loss)}


@torch.no_grad()
def generate(model: torch.nn.Module, tokenizer: Any, prompts: list[Example]) -> list[dict[str, Any]]:
    """Greedy generations for ``prompts``, each as long as its reference span, and whether they match it exactly."""
    model.eval()
    device = next(model.parameters()).device
    rows = []
    for example in prompts:
        ids = torch.tensor([example.input_ids[: example.prompt_length]], device=device)
        output = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=example.reference_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        text = tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True)
        rows.append(
            {
                "where": example.where,
                "prompt": tokenizer.decode(ids[0]),
                "reference": example.reference,
                "generation": text,
                "exact_match": text.strip() == example.reference.strip(),
            }
        )
    return rows


def evaluate(adapter: Path, options: EvalOptions) -> dict[str, float]:
    """Loss and perplexity of an exported causal-LM adapter (or full model) on the validation records.

    ``options.data`` (from training), ``options.validation_file`` or the split ``options.validation_split`` of
    ``options.dataset``. With ``data.generate_eval`` = N, the first N validation prompts are generated greedily into
    ``data.generations_file`` (JSON Lines) and ``exact_match`` is their matched share.
    """
    if options.task not in (None, TASK) or options.data_dir is not None:
        raise SoraError(
            f"{adapter} was trained on task {TASK}: pass its --validation-file or --dataset, no other task or data"
        )
    tokenizer = causal_tokenizer(str(adapter))
    in_4bit = options.base_in_4bit(saved_task(adapter))
    model = load_exported(adapter, options.model_name, lambda name: load_model(name, tokenizer, in_4bit))
    data = options.data
    if data is None:
        max_seq_length = saved_task(adapter)["max_seq_length"]
        if options.dataset is not None:
            split = options.validation_split or "validation"
            examples = dataset_examples(options.dataset, options.dataset_config, split, tokenizer, max_seq_length)
        elif options.validation_file is not None:
            examples = read_examples(options.validation_file, tokenizer, max_seq_length)
        else:
            raise SoraError(f"{adapter} was trained on task {TASK}: pass its --validation-file or --dataset")
        data = CausalLMData(CausalLMSpec(), DatasetDict({"validation": to_dataset(examples)}), [])
    dataset = subsample(data.splits["validation"], options.max_eval_samples, options.seed)
    return score(model, tokenizer, data, dataset, "validation", options.batch_size)


def score(
    model: torch.nn.Module, tokenizer: Any, data: CausalLMData, dataset: Dataset, split: str, batch_size: int
) -> dict[str, float]:
    """Loss and perplexity of ``model`` on the encoded ``dataset``; on the validation split with
    ``data.generate_eval`` = N also ``exact_match`` of the first N validation prompts' greedy generations, written to
    ``data.generations_file`` (JSON Lines)."""
    scores = masked_loss(model, tokenizer, dataset, batch_size)
    if split == "validation" and data.generate_eval:
        rows = generate(model, tokenizer, data.prompts[: data.generate_eval])
        scores["exact_match"] = sum(r["exact_match"] for r in rows) / len(rows)
        if data.generations_file is not None and is_main_process():
            _io.write_text(data.generations_file, "".join(json.dumps(r) + "\n" for r in rows))
    return scores


FAMILY = TaskFamily(
    task_type="CAUSAL_LM",
    default_model=gguf_cache.default_model,  # the embedded SmolLM2-135M-Instruct
    load=load,
    heads=lambda model: [],  # the LM head stays frozen: LLM servers load LoRA tensors only, no modules_to_save
    baseline=unigram_baseline,
    collator=collator,
    trainer_metrics=lambda spec, split: None,  # the Trainer's eval_loss selects the checkpoint
    evaluate=evaluate,
    score=score,
)
