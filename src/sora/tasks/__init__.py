"""The registry of task families, keyed by task name: the training core finds a task's family here.

A new family is one module beside these (a ``TaskFamily``, see ``base.py``) and one line in ``FAMILIES``, or a
call to :func:`register_family` from outside the package.
"""

from __future__ import annotations

from ..data import TASKS
from ..errors import SoraError
from . import causal_lm, classification
from .base import EvalOptions, LoadedTask, TaskFamily

FAMILIES: dict[str, TaskFamily] = {
    **dict.fromkeys([*TASKS, "custom"], classification.FAMILY),
    causal_lm.TASK: causal_lm.FAMILY,
}

__all__ = ["FAMILIES", "EvalOptions", "LoadedTask", "TaskFamily", "register_family", "task_family"]


def register_family(task: str, family: TaskFamily) -> None:
    """Train and score ``task`` with ``family`` (``sora train --task TASK``, ``sora.train.train``)."""
    FAMILIES[task] = family


def task_family(task: str) -> TaskFamily:
    """The family that trains ``task``; an unknown task is a SoraError naming the known ones."""
    if task not in FAMILIES:
        raise SoraError(f"unknown task {task!r}; known tasks: {', '.join(FAMILIES)}")
    return FAMILIES[task]
