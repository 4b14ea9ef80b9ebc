"""Which task each step of a multi-task run trains on (the batch sampler of train/multitask.py).

    task_sequence([2490, 3668, 5749], total=1000, sampler="temperature", seed=0, temperature=2.0)

``proportional``: task i with probability n_i / sum n (MT-DNN, Liu et al. 2019: every batch of
every task once per epoch, shuffled). ``temperature``: p_i ~ n_i^(1/T) (T = 2 is square-root
sampling; T -> inf uniform; Arivazhagan et al. 2019). ``round_robin``: tasks in turn.
``annealed`` (Stickland & Murray 2019): p_i ~ n_i^alpha with alpha falling linearly from 1 at the
first step to ``anneal_min`` at the last, so small tasks gain weight late in training.
"""

from __future__ import annotations

import numpy as np

SAMPLERS = ("proportional", "temperature", "round_robin", "annealed")


def probabilities(sizes, sampler: str, *, temperature: float = 2.0, alpha: float = 1.0) -> np.ndarray:
    """The task distribution of one step (round robin: uniform on average)."""
    n = np.asarray(sizes, dtype=np.float64)
    if sampler == "proportional":
        p = n
    elif sampler == "temperature":
        p = n ** (1.0 / temperature)
    elif sampler == "annealed":
        p = n**alpha
    elif sampler == "round_robin":
        p = np.ones_like(n)
    else:
        raise ValueError(f"unknown sampler {sampler!r}; known: {', '.join(SAMPLERS)}")
    return p / p.sum()


def anneal_alpha(step: int, total: int, anneal_min: float) -> float:
    return 1.0 - (1.0 - anneal_min) * (step / max(1, total - 1))


def task_sequence(sizes, total: int, sampler: str, seed: int, *, temperature: float = 2.0,
                  anneal_min: float = 0.2) -> np.ndarray:
    """The task index of each of ``total`` steps; depends only on the arguments (seeded)."""
    k = len(sizes)
    if sampler == "round_robin":
        return np.arange(total) % k
    rng = np.random.default_rng([seed, 7919])
    if sampler == "annealed":
        u = rng.random(total)
        cum = np.stack([np.cumsum(probabilities(sizes, sampler, alpha=anneal_alpha(s, total, anneal_min)))
                        for s in range(total)])
        return np.minimum((u[:, None] > cum).sum(1), k - 1)
    return rng.choice(k, size=total, p=probabilities(sizes, sampler, temperature=temperature))


def expected_shares(sizes, total: int, sampler: str, *, temperature: float = 2.0, anneal_min: float = 0.2) -> np.ndarray:
    """The expected share of steps per task over a whole run of ``total`` steps."""
    if sampler == "annealed":
        return np.mean([probabilities(sizes, sampler, alpha=anneal_alpha(s, total, anneal_min))
                        for s in range(total)], axis=0)
    return probabilities(sizes, sampler, temperature=temperature)
