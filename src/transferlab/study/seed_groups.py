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
MAX_SEEDS = 20  # slots a group holds on the CPU by default (20 BERT-base seeds fit in 80 GB at 32 x 128: issue 6)
MAX_SLOTS = 64  # the most slots a group holds by default on CUDA, where the memory estimate decides below it


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


def slot_limit(specs: list, max_slots: int | None) -> int:
    """The slots a group may hold: ``max_slots`` (checked against the memory estimate: one line naming it when
    the slots cannot fit), else what fits (train/memory.py) up to MAX_SEEDS on the CPU, MAX_SLOTS on CUDA."""
    from transferlab.train.memory import device_memory, max_slots as fitting, slot_bytes

    if max_slots is not None and (isinstance(max_slots, bool) or not isinstance(max_slots, int) or max_slots < 1):
        raise UserError(f"--max-slots: {max_slots!r} must be an integer >= 1 (runs in one stacked group)")
    shapes = {(s.model.name, s.model.num_layers, s.model.max_length, s.train.batch_size, s.train.precision,
               s.train.checkpoint_layers, s.train.device): s for s in specs}  # one estimate per shape
    specs = list(shapes.values())
    fits = [f for f in (fitting(s) for s in specs) if f is not None]
    if max_slots is None:
        kind = device_memory(specs[0])[0]
        return max(1, min([MAX_SLOTS if kind == "cuda" else MAX_SEEDS, *fits]))
    if fits and max_slots > min(fits):
        spec = specs[[fitting(s) for s in specs].index(min(fits))]
        kind, free = device_memory(spec)
        per = slot_bytes(spec, kind) or 0
        raise UserError(f"--max-slots: {max_slots} slots of {spec.name} need about {max_slots * per / 2**30:.1f} GiB "
                        f"({per / 2**30:.2f} GiB a slot, estimated); the {kind} has {free / 2**30:.1f} GiB free: "
                        f"at most {min(fits)}")
    return max_slots


def _split_reason(buckets: list[list[Job]], specs: dict) -> str | None:
    """Why two groups are not one where only a part's missing per-slot flag splits them (the field and the
    flag, train/support.py slot_refusal); None when every split is the runs' own structure (task, model, head,
    step plan...), which no flag could join."""
    from transferlab.train.support import slot_refusal

    firsts = [specs[bucket[0].index] for bucket in buckets]
    for i, a in enumerate(firsts):
        for b in firsts[i + 1:]:
            found = slot_refusal([a, b])
            if found is not None and found[1]:
                return f"{a.name} and {b.name} cannot share a stacked group: {found[0]}"
    return None


def seed_groups(jobs: list[Job], mode: str = "auto", has_hooks: bool = False,
                max_slots: int | None = None) -> list[list[Job]]:
    """Jobs in stacked groups (slots: runs of one stack key, train/support.py; at most ``max_slots`` each);
    every job alone when ``mode`` is off, when loop hooks are in play, or the engine cannot run the group.

    Order: jobs come seed by seed (study/expand.py) and a group takes them in that order (seed-major: a
    group holds every arm of the first seeds), and groups of different stack keys interleave: the first
    group of every key, in order of first appearance, then the second, so a study stopped early has runs
    of every arm. This order is the execution order that ``--dry-run`` lists. ``on`` with runs that only a
    part's missing per-slot flag keeps apart refuses (one line naming the field and the flag); ``auto`` logs
    that split. Runs of different structure (task, model, head, step plan) simply form separate groups."""
    if mode not in ("auto", "on", "off"):
        raise UserError(f"--seed-parallel: {mode!r} is not one of auto, on, off")
    if max_slots is not None and jobs:
        slot_limit([job.spec for job in jobs], max_slots)  # 0, or beyond memory: one line before any run
    if mode == "off" or has_hooks or len(jobs) < 2 or any(job.tracking or job.prune for job in jobs):
        return _state_dtype_checked([[job] for job in jobs])  # live tracking, pruning: one by one
    from transferlab.train.support import Unsupported, stack_key, unsupported

    specs = {job.index: job.spec for job in jobs}
    by_key: dict[tuple[str, str], list[Job]] = {}
    for job in jobs:
        by_key.setdefault((job.store, stack_key(specs[job.index])), []).append(job)
    buckets = list(by_key.values())
    if len(buckets) > 1 and (mode == "on" or _cuda_run(jobs[0].spec)) and (why := _split_reason(buckets, specs)):
        if mode == "on":  # arms a part's flag keeps apart: asked for explicitly, refused
            raise Unsupported(f"--seed-parallel on: {why}")
        log.warning("seed-parallel: %d stacked groups, not one: %s", len(buckets), why)
    rounds: list[list[list[Job]]] = []  # rounds[k]: the k-th group of every key
    for members in buckets:
        first = specs[members[0].index]
        why = unsupported([specs[j.index] for j in members]) if len(members) > 1 else "one run"
        if why is not None and mode == "on" and len(members) > 1:
            raise Unsupported(f"--seed-parallel on: {first.name}: {why}")
        if why is not None and len(members) > 1 and _cuda_run(first):  # auto: a logged fallback
            log.warning("seed-parallel: %s runs one at a time: %s", first.name, why)
        parallel = why is None and (mode == "on" or _cuda_run(first))
        size = slot_limit([specs[j.index] for j in members], max_slots) if parallel else 1
        chunks = [members[i:i + size] for i in range(0, len(members), size)]
        for k, chunk in enumerate(chunks):
            if k == len(rounds):
                rounds.append([])
            rounds[k].append(chunk)
    groups = [g for r in rounds for g in r]
    _state_dtype_checked(groups)
    if not any(len(g) > 1 for g in groups):
        return _state_dtype_checked([[job] for job in jobs])  # nothing stacked: exactly the planned (seed-major) order
    return groups


def execute_group(jobs: list[Job], emit=None) -> list[Outcome]:
    """Run a group through the engine in this process (study/jobs.py); failures become outcomes. ``emit``:
    each slot's outcome as it ends (the rest are returned)."""
    return execute_jobs(jobs, emit=emit)
