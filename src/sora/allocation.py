"""Did the data choose the surviving ranks, or the initialisation? Measurements of a SoRA run's allocation.

The soft threshold ``T_tau`` subtracts the same ``tau`` from every ``|g_i|``, so it keeps their order: where the
gradients move the gates little against their spread at initialisation (N(0, 1) gates, short runs), the ranks that
survive are the gates that started largest, whatever the data say. Two numbers tell:

- :func:`init_overlap`: the share of the ``k`` surviving gate entries that were among the ``k`` largest ``|g|`` at
  initialisation, against the chance level ``k / n`` of a survivor set that ignored the initialisation. Near 1:
  the initialisation chose; near chance: it did not.
- :func:`survivor_overlap`: how many survivors two runs share that differ only in the gates' initialisation
  (``SoraConfig(gate_seed=...)``), against chance. Well above chance: the data chose.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .bank import gate_parameters
from .modules import gate_vector
from .optim import as_sora_optimizer


def init_overlap(initial: torch.Tensor, final: torch.Tensor) -> dict[str, float | int]:
    """The share of the surviving entries of ``final`` (non-zero) that were among the ``k`` largest ``|initial|``,
    ``k`` the number of survivors, and its chance level ``k / n``.

    Ties in ``|initial|`` at the ``k``-th value share the top-``k`` places left among them, so a constant
    initialisation (every gate equal) gives exactly the chance level. No survivor: overlap 0.
    """
    magnitude = initial.detach().reshape(-1).double().abs()
    alive = final.detach().reshape(-1) != 0
    n, k = magnitude.numel(), int(alive.sum())
    if k == 0:
        return {"overlap": 0.0, "chance": 0.0, "survivors": 0, "gates": n}
    kth = magnitude.sort(descending=True).values[k - 1]
    above, tied = magnitude > kth, magnitude == kth
    weight = above.double() + tied.double() * float(k - int(above.sum())) / int(tied.sum())
    return {"overlap": float(weight[alive].sum()) / k, "chance": k / n, "survivors": k, "gates": n}


def survivor_overlap(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """The survivors (non-zero entries) two gate vectors share, ``|A ∩ B| / sqrt(|A|·|B|)``, and its chance level
    ``sqrt(|A|·|B|) / n`` (the expected share of two independent random sets of those sizes)."""
    alive_a, alive_b = a.detach().reshape(-1) != 0, b.detach().reshape(-1) != 0
    size = math.sqrt(int(alive_a.sum()) * int(alive_b.sum()))
    if size == 0:
        return {"overlap": 0.0, "chance": 0.0}
    return {"overlap": int((alive_a & alive_b).sum()) / size, "chance": size / alive_a.numel()}


def gate_vectors(model: torch.nn.Module, optimizer: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The gates where ``optimizer`` (a :class:`~sora.SoraOptimizer`, or accelerate's wrapper of one) found them
    and where they are now in ``model``, as flat float32 CPU vectors in module order; None for another optimizer."""
    optimizer = as_sora_optimizer(optimizer)
    if optimizer is None or "initial_gates" not in optimizer.gate_group:
        return None
    final = gate_vector(gate_parameters(model), gathered=True)
    return torch.tensor(optimizer.gate_group["initial_gates"], dtype=torch.float32), final
