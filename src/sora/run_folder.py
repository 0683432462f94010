"""The run folder that ``sora train`` writes and ``sora eval`` / ``--resume`` read.

``run_config.json`` marks a run folder (its ``TrainConfig``); ``checkpoints/checkpoint-N`` are the Trainer's;
``adapter/`` is the exported adapter (or whole model, full fine-tuning and BitFit) with ``sora_task.json`` beside it:
the task spec and what scoring needs to reproduce the run's own numbers. Everything here is written atomically, and
adapters are read from safetensors only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from safetensors import SafetensorError, safe_open

from . import _io
from .dataset_input import resolve
from .errors import SoraError, first_line
from .model import load_safetensors, quiet_peft
from .run_config import TrainConfig

RUN_MARKER = "run_config.json"
TASK_FILE = "sora_task.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def is_main_process() -> bool:
    """Global rank 0, or not distributed (torchrun and ``accelerate launch`` set ``RANK``)."""
    return int(os.environ.get("RANK", "0")) == 0


def prepare_output(cfg: TrainConfig, resume: bool) -> Path:
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


def export(model: torch.nn.Module, tokenizer: Any, spec: Any, cfg: TrainConfig, final: Path) -> Path:
    """Write the adapter (or model) and its task file to the folder ``final`` atomically: a temp folder beside it,
    then a rename. The task file records ``spec`` (a dataclass) and what scoring needs to score the examples the run
    scored in the same batches: ``max_seq_length``, ``max_eval_samples``, ``seed``, ``batch_size``, whether the
    base was loaded in 4 bits (``load_in_4bit``) and, for a ``--dataset`` run, its source (``dataset``:
    :func:`dataset_record`)."""
    staging = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    task = {
        "spec": asdict(spec),
        "max_seq_length": cfg.max_seq_length,
        "method": cfg.method,
        "max_eval_samples": cfg.max_eval_samples,
        "seed": cfg.seed,
        "batch_size": eval_batch_size(cfg),
        "load_in_4bit": cfg.load_in_4bit,  # sora eval loads the base as the run trained on it
        "dataset": None if cfg.dataset is None else dataset_record(cfg),  # sora eval scores the same dev split
    }
    _io.write_json(staging / TASK_FILE, task)
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    return final


def dataset_record(cfg: TrainConfig) -> dict[str, str | None]:
    """Where a ``--dataset`` run's dev split comes from, as the task file records it: the dataset (a local one as
    an absolute path), its hub configuration and the split's name."""
    return {
        "dataset": resolve(cfg.dataset),
        "dataset_config": cfg.dataset_config,
        "validation_split": cfg.validation_split,
    }


def eval_batch_size(cfg: TrainConfig) -> int:
    """The batch size a run scores its dev splits with (the Trainer's ``per_device_eval_batch_size`` too)."""
    return cfg.batch_size * 2


def saved_task(adapter: Path) -> dict[str, Any]:
    """The task file ``sora train`` writes beside an exported adapter (see :func:`export`)."""
    task_file = adapter / TASK_FILE
    if not task_file.is_file():
        raise SoraError(f"{adapter}: not an adapter written by `sora train` (no {TASK_FILE})")
    return json.loads(task_file.read_text(encoding="utf-8"))


def load_exported(adapter: Path, model_name: str | None, load_model: Callable[[str], torch.nn.Module]):
    """The exported model in ``adapter``: ``load_model(base)`` with the PEFT adapter on it, where ``base`` is
    ``model_name`` or the base the adapter names; a folder without an adapter config holds a whole model."""
    adapter_config = adapter / "adapter_config.json"
    if not adapter_config.is_file():  # full fine-tuning / BitFit: a whole model
        return load_model(str(adapter))
    base_name = model_name or json.loads(adapter_config.read_text(encoding="utf-8"))["base_model_name_or_path"]
    return load_peft(load_model(base_name), adapter, base_name)


def load_peft(base: torch.nn.Module, adapter: Path, base_name: str) -> PeftModel:
    """The PEFT adapter in ``adapter`` on ``base`` (the model ``base_name``), read from safetensors only: a pickled
    ``adapter_model.bin`` is refused, never unpickled."""
    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():
        raise SoraError(f"{adapter}: no adapter_model.safetensors (pickled weights are not loaded)")
    load_safetensors(weights)  # a truncated or foreign file is one line here, not PEFT's traceback
    try:
        with quiet_peft():
            return PeftModel.from_pretrained(base, str(adapter))
    except (RuntimeError, ValueError, KeyError, OSError) as e:
        # torch's load_state_dict error opens with a bare heading; its first "size mismatch" line names the tensor
        lines = [line.strip() for line in str(e).splitlines() if line.strip().startswith("size mismatch")]
        detail = lines[0] if lines else first_line(e)
        raise SoraError(f"{adapter}: the adapter does not fit model {base_name!r}: {detail}") from None


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


def last_complete_checkpoint(checkpoints: Path, remove_incomplete: bool = False) -> str | None:
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


def last_checkpoint_text(checkpoints: str | Path) -> str:
    """Where a stopped run can resume from, for its error line."""
    last = last_complete_checkpoint(Path(checkpoints))
    return f"the last good checkpoint is {last}" if last else "no checkpoint was saved yet"
