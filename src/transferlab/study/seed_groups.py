"""Group a study's jobs that differ only in seed, for the seed-stacked engine (train/loop.py, train/support.py).

    for group in seed_groups(jobs, mode="auto"):
        outcomes = execute_group(group)     # one Outcome per job, as ``execute`` gives it

``mode``: ``on`` groups whenever the engine supports the recipe; ``auto`` (the default) only when
the runs train on CUDA, where one run leaves the GPU mostly idle; ``off`` never. On CPU the engine
gains little and its numbers differ from sequential runs in the last bits (batched matrix products
round differently; with dropout the masks come from one shared random stream), so ``auto`` keeps
CPU studies bitwise reproducible across executors. Groups hold at most ``MAX_SEEDS`` runs; a group
the engine refuses when it sees the data (e.g. seeds with training sets of different sizes) runs
one job after the other.
"""

from __future__ import annotations

import logging

from transferlab.errors import UserError
from transferlab.study.jobs import Job, Outcome, execute_jobs

log = logging.getLogger(__name__)
MAX_SEEDS = 20  # 20 BERT-base seeds fit in 80 GB at batch 32, length 128 (issue 6)


def _cuda_run(spec) -> bool:
    import torch

    device = spec.train.device
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def _state_dtype_checked(groups: list[list[Job]]) -> list[list[Job]]:
    """optim.state_dtype: bf16 holds seed-stacked states only: a run left alone is refused before any is claimed."""
    from transferlab.recipes.optim import check_state_dtype

    for group in groups:
        if group[0].spec.optim.state_dtype != "fp32":
            check_state_dtype(group[0].spec.optim, seed_stacked=len(group) > 1)
    return groups


def seed_groups(jobs: list[Job], mode: str = "auto", has_hooks: bool = False) -> list[list[Job]]:
    """Jobs in groups of one recipe (at most MAX_SEEDS each); every job alone when ``mode`` is off, when
    loop hooks are in play, or the engine cannot run the recipe.

    Order: jobs come seed by seed (study/expand.py), and groups keep that interleaving: the first
    group of every recipe, in order of first appearance, then the second group of every recipe, and
    so on, so a study stopped early has runs of every arm. This order is the execution order that
    ``--dry-run`` lists."""
    if mode not in ("auto", "on", "off"):
        raise UserError(f"--seed-parallel: {mode!r} is not one of auto, on, off")
    if mode == "off" or has_hooks or len(jobs) < 2 or any(job.tracking or job.prune for job in jobs):
        return _state_dtype_checked([[job] for job in jobs])  # live tracking, pruning: one by one
    from transferlab.spec import spec_hash
    from transferlab.train.support import Unsupported, unsupported

    specs = {job.index: job.spec for job in jobs}
    by_recipe: dict[tuple[str, str], list[Job]] = {}
    for job in jobs:
        by_recipe.setdefault((job.store, spec_hash(specs[job.index])), []).append(job)
    rounds: list[list[list[Job]]] = []  # rounds[k]: the k-th group of every recipe
    for members in by_recipe.values():
        first = specs[members[0].index]
        why = unsupported([specs[j.index] for j in members]) if len(members) > 1 else "one seed"
        if why is not None and mode == "on" and len(members) > 1:
            raise Unsupported(f"--seed-parallel on: {first.name}: {why}")
        if why is not None and len(members) > 1 and _cuda_run(first):  # auto: a logged fallback
            log.warning("seed-parallel: %s runs one seed at a time: %s", first.name, why)
        parallel = why is None and (mode == "on" or _cuda_run(first))
        chunks = ([members[i:i + MAX_SEEDS] for i in range(0, len(members), MAX_SEEDS)] if parallel
                  else [[j] for j in members])
        for k, chunk in enumerate(chunks):
            if k == len(rounds):
                rounds.append([])
            rounds[k].append(chunk)
    groups = [g for r in rounds for g in r]
    _state_dtype_checked(groups)
    if not any(len(g) > 1 for g in groups):
        return _state_dtype_checked([[job] for job in jobs])  # nothing stacked: exactly the planned (seed-major) order
    return groups


def execute_group(jobs: list[Job]) -> list[Outcome]:
    """Run a group through the engine in this process (study/jobs.py); failures become outcomes."""
    return execute_jobs(jobs)
