"""Greedy ensemble selection (Caruana et al. 2004): forward selection with replacement over candidates'
predictions on validation rows. `fitloop.tabular.ensemble.build_ensemble` applies it to finished table runs
and saves the result as a run directory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

__all__ = ["greedy_selection", "Selection", "DEFAULT_ROUNDS"]

DEFAULT_ROUNDS = 25


@dataclass
class Selection:
    """What greedy ensemble selection chose.

    Attributes:
        counts: how many times each candidate was picked (its weight is its share of the picks).
        loss: the validation loss of the kept ensemble.
        history: the validation loss after each round (the kept round is the first with the lowest).
    """

    counts: list[int]
    loss: float
    history: list[float] = field(default_factory=list)


def greedy_selection(candidates: Sequence[torch.Tensor], loss_of: Callable[[torch.Tensor], float],
                     rounds: int = DEFAULT_ROUNDS) -> Selection:
    """Caruana et al.'s forward selection with replacement: each round adds the candidate whose addition to
    the running average of predictions gives the lowest `loss_of`; the best round is returned.

    Args:
        candidates: each candidate's predictions on the validation rows, all of one shape (probabilities or
            values: the ensemble's prediction is their weighted mean).
        loss_of: the validation loss of a mean prediction.
        rounds: the number of picks (the first pick is the best single candidate).

    Returns:
        `Selection`; ties go to the earlier candidate, so the result is deterministic.
    """
    if not candidates or rounds < 1:
        raise ValueError(f"greedy_selection: needs candidates and rounds >= 1 (got {len(candidates)}, {rounds}).")
    total = torch.zeros_like(candidates[0], dtype=torch.float64)
    counts = [0] * len(candidates)
    best: Selection | None = None
    history: list[float] = []
    for picks in range(1, rounds + 1):
        losses = [loss_of((total + c) / picks) for c in candidates]
        chosen = min(range(len(candidates)), key=losses.__getitem__)
        total += candidates[chosen]
        counts[chosen] += 1
        history.append(losses[chosen])
        # a real improvement: the same members re-picked only move the loss by rounding
        if best is None or losses[chosen] < best.loss - 1e-12 * abs(best.loss):
            best = Selection(list(counts), losses[chosen])
    assert best is not None
    best.history = history
    return best
