"""Transplant: copy a source model's weights into the target by role and layer mapping.

    report = transplant(target, source, layers={5: 0}, roles=["q", "k", "v", "o"], heads=None)
    reports = apply_transplants(model, spec.transplant, store)      # the run's ``transplant:`` steps

Both models are read through the canonical schema (models/schema), so layers move between families:
a wav2vec2 or RoBERTa layer into BERT, a GPT-2 layer into a GPT-2 of another depth. What a layer
computes besides its weights (LayerNorm before or after the sub-blocks, activation, LayerNorm eps,
causal attention, GPT-2's per-layer attention scale) is compared for every mapped pair; each
difference is a note in the report and sets ``function_changes``: a pre-LN layer in a post-LN
model is allowed but no longer computes what it computed in its own model.

``layers``: ``all`` (target layer i <- source layer i, for every target layer), ``3``, ``"2-4"``,
``"5<-0"`` / ``"4-5<-0-1"`` (target <- source), or a mapping ``{target: source}``. ``heads``:
``[0, 2]`` or ``{target_head: source_head}``: only those heads' rows of q, k, v and columns of o
move. ``modules`` (embeddings, positions, embed_norm, final_norm, pooler) move only between models
of one family; there is no policy for, e.g., a wav2vec2 feature encoder into BERT's embeddings.
``head`` (in ``modules``) moves the task classifier of a stored run (``run:``) whose task has the
same label set (problem, number of labels, label names in order) and the same head; anything else
is a one-line error. With ``layers: all`` too, that is intermediate-task transfer (Phang et al. 2018).

Shapes must match unless ``on_mismatch`` (for all roles, or per role) says ``truncate`` (copy the
overlapping block, the rest keeps the target's values) or ``tile`` (repeat the source to cover the
target, then cut). With ``error`` (the default) every mismatch is listed and nothing is copied.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import Tensor, nn

from transferlab.errors import ModelError, SpecError, UserError
from transferlab.models.schema import ALL_LAYER_ROLES, ATTENTION_ROLES, GLOBAL_ROLES, ModelSchema, schema_of
from transferlab.recipes.init import apply_init, check_roles, layer_tokens, resolve_layers, shared_note
from transferlab.spec import SECTION_CHECKS

MISMATCH_MODES = ("error", "truncate", "tile")


# ---------------------------------------------------------------- mappings


def layer_pairs(value: Any, target: ModelSchema, source: ModelSchema, where: str = "transplant.layers"
                ) -> list[tuple[int, int]]:
    """(target layer, source layer) pairs named by ``value``."""
    nt, ns = target.num_layers, source.num_layers
    tfam, sfam = f"the target ({target.family.name})", f"the source ({source.family.name})"
    if isinstance(value, dict):
        pairs = []
        for t, s in value.items():
            t, s = _index(t, where), _index(s, where)
            resolve_layers(t, nt, where, tfam)
            resolve_layers(s, ns, where, sfam)
            pairs.append((t, s))
        return pairs
    if value == "all":
        if ns < nt:
            raise SpecError(f"{where}: 'all' maps target layer i to source layer i, but {tfam} has {nt} layers and "
                            f"{sfam} only {ns}; give a mapping such as {{0: 0}} or \"0-{ns - 1}\"")
        return [(i, i) for i in range(nt)]
    pairs = []
    items = value.split(",") if isinstance(value, str) else (value if isinstance(value, list) else [value])
    for item in items:
        if isinstance(item, str) and "<-" in item:
            left, right = item.split("<-")
            ts, ss = resolve_layers(left, nt, where, tfam), resolve_layers(right, ns, where, sfam)
            if len(ts) != len(ss):
                raise SpecError(f"{where}: {item!r} maps {len(ts)} target layers to {len(ss)} source layers")
            pairs += list(zip(ts, ss))
        else:
            ts = resolve_layers(item, nt, where, tfam)
            resolve_layers(item, ns, where, sfam)
            pairs += [(i, i) for i in ts]
    return pairs


def _index(value: Any, where: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise SpecError(f"{where}: {value!r} is not a layer or head index") from None


def head_pairs(value: Any, target: ModelSchema, source: ModelSchema, where: str = "transplant.heads"
               ) -> list[tuple[int, int]] | None:
    if value is None:
        return None
    pairs = ([(_index(t, where), _index(s, where)) for t, s in value.items()] if isinstance(value, dict)
             else [(_index(h, where),) * 2 for h in (value if isinstance(value, list) else [value])])
    for t, s in pairs:
        for h, schema, side in ((t, target, "target"), (s, source, "source")):
            if not 0 <= h < schema.num_heads:
                raise SpecError(f"{where}: head {h} does not exist; the {side} ({schema.family.name}) has heads "
                                f"0-{schema.num_heads - 1}")
    if target.head_dim != source.head_dim:
        raise ModelError(f"{where}: heads have {source.head_dim} values in the source ({source.family.name}) and "
                         f"{target.head_dim} in the target ({target.family.name}); a head cannot move")
    return pairs


def _mode(on_mismatch: str | dict[str, str], role: str) -> str:
    return on_mismatch.get(role, on_mismatch.get("default", "error")) if isinstance(on_mismatch, dict) else on_mismatch


def resize(src: Tensor, target: Tensor, mode: str) -> Tensor:
    """``src`` fitted to ``target``'s shape: ``truncate`` (overlap copied, rest kept) or ``tile``."""
    if src.dim() != target.dim():
        raise ModelError(f"cannot {mode} a {src.dim()}-d tensor into a {target.dim()}-d one")
    if mode == "tile":
        reps = [math.ceil(t / s) for t, s in zip(target.shape, src.shape)]
        return src.repeat(reps)[tuple(slice(0, n) for n in target.shape)]
    out = target.detach().clone()
    region = tuple(slice(0, min(a, b)) for a, b in zip(target.shape, src.shape))
    out[region] = src[region].to(out.dtype)
    return out


# ---------------------------------------------------------------- the transplant


def _trait_notes(target: ModelSchema, source: ModelSchema, pairs: list[tuple[int, int]]) -> list[str]:
    notes = []
    for t, s in pairs:
        mine, theirs = target.layer_traits(t), source.layer_traits(s)
        for key in mine:
            if mine[key] != theirs[key]:
                what = f"target layer {t} <- source layer {s}: {key} {theirs[key]} -> {mine[key]}"
                if key == "norm":
                    what += " (a pre-LN layer in a post-LN model or the reverse: the layer's function changes)"
                notes.append(what)
    return notes


Move = tuple[str, str, int | None, int | None, str]  # target key, source key, target head, source head, role


def _layer_moves(ts: ModelSchema, ss: ModelSchema, pairs: list[tuple[int, int]], roles: list[str],
                 hpairs: list[tuple[int, int]] | None) -> tuple[list[Move], list[str], list[tuple]]:
    """The moves of the mapped layers' roles; biases the source lacks (written as zeros); roles only one side has."""
    moves: list[Move] = []
    zeroed, one_sided = [], []
    for t, s in pairs:
        for role in roles:
            for part in ("weight", "bias"):
                tk, sk = ts.layer_key(t, role, part), ss.layer_key(s, role, part)
                if tk not in ts.slots or sk not in ss.slots:
                    if tk in ts.slots and part == "bias" and ss.layer_key(s, role, "weight") in ss.slots:
                        zeroed.append(tk)  # the source layer has no bias there: a zero bias computes the same
                    elif tk in ts.slots or sk in ss.slots:
                        one_sided.append((t, s, role, part, tk in ts.slots, sk in ss.slots))
                    continue
                if hpairs is None:
                    moves.append((tk, sk, None, None, role))
                elif not (role == "o" and part == "bias"):
                    moves += [(tk, sk, th, sh, role) for th, sh in hpairs]
    return moves, zeroed, one_sided


def _module_moves(ts: ModelSchema, ss: ModelSchema, modules: list[str]) -> list[Move]:
    """The moves of whole modules (embeddings, final_norm...), only between models of one family."""
    moves: list[Move] = []
    for module in modules:
        if ts.family.name != ss.family.name:
            raise ModelError(f"transplant.modules: no policy to move {module!r} from {ss.family.name} into "
                             f"{ts.family.name} (their {module} differ in kind and layout); move layer roles only, "
                             f"or take {module} from a {ts.family.name} model")
        tkeys, skeys = ts.keys(f"{module}:*"), ss.keys(f"{module}:*")
        if not tkeys or set(tkeys) != set(skeys):
            raise ModelError(f"transplant.modules: {module!r} differs between source and target: target has "
                             f"{tkeys or 'none'}, source has {skeys or 'none'}")
        moves += [(k, k, None, None, module) for k in tkeys]
    return moves


def _fit(ts: ModelSchema, ss: ModelSchema, moves: list[Move], on_mismatch: str | dict[str, str],
         source_name: str) -> list[tuple]:
    """Each move with its two views and how the shapes are fitted (None: they match); every mismatch
    that may not be fitted is listed in one error before anything is copied."""
    plan, mismatches = [], []
    for tk, sk, th, sh, role in moves:
        tv = ts.view(tk) if th is None else ts.head_view(tk, th)
        sv = ss.view(sk) if sh is None else ss.head_view(sk, sh)
        mode = _mode(on_mismatch, role)
        if tv.shape != sv.shape and mode == "error":
            mismatches.append(f"{tk} {tuple(tv.shape)} <- {sk} {tuple(sv.shape)}")
        plan.append((tk, sk, th, sh, tv, sv, mode if tv.shape != sv.shape else None))
    if mismatches:
        widths = (f"the source is {ss.hidden_size} wide and the target {ts.hidden_size} wide, so "
                  if ss.hidden_size != ts.hidden_size else "")
        raise ModelError(f"transplant from {source_name or ss.family.name}: {widths}{len(mismatches)} shapes do not "
                         f"match (set on_mismatch: truncate or tile to fit them): " + "; ".join(mismatches[:12])
                         + (" ..." if len(mismatches) > 12 else ""))
    return plan


def _copy(ts: ModelSchema, zeroed: list[str], plan: list[tuple]) -> tuple[list[dict], int]:
    """Write the planned moves; one report entry per tensor written, and the values moved."""
    moved, moved_values = [], 0
    for tk in zeroed:
        ts.view(tk).zero_()
        moved.append({"target": tk, "source": "(none: zero bias)", "values": ts.view(tk).numel()})
    for tk, sk, th, sh, tv, sv, mode in plan:
        before = float(tv.float().norm())
        value = sv if mode is None else resize(sv, tv, mode)
        tv.copy_(value.to(tv.dtype))
        n = sv.numel() if mode != "truncate" else math.prod(min(a, b) for a, b in zip(tv.shape, sv.shape))
        moved_values += n
        entry = {"target": tk, "source": sk, "values": n, "norm_before": before, "norm_after": float(tv.float().norm()),
                 "source_norm": float(sv.float().norm())}
        if th is not None:
            entry.update(target_head=th, source_head=sh)
        if mode:
            entry["resized"] = mode
        moved.append(entry)
    return moved, moved_values


def _differences(ts: ModelSchema, ss: ModelSchema, pairs: list[tuple[int, int]], one_sided: list[tuple]) -> list[str]:
    """What the mapped layers compute differently in their new model (traits, roles only one side has)."""
    differences = _trait_notes(ts, ss, pairs)
    for t, s, role, part, in_target, in_source in one_sided:
        if in_source and part == "bias" and float(ss.view(ss.layer_key(s, role, part)).abs().max()) == 0.0:
            continue  # a zero bias the target has no place for changes nothing
        differences.append(f"target layer {t} <- source layer {s}: {role}.{part} "
                           + ("kept: the source has none" if in_target else "dropped: the target has none"))
    return differences


def _side_notes(target: nn.Module, ts: ModelSchema, moves: list[Move]) -> list[str]:
    """Notes on what moved besides the layers' function: shared tensors, the pooler head's copy."""
    notes = []
    shared = shared_note(ts, [m[0] for m in moves])
    if shared:
        notes.append(shared)
    if any(k.startswith("pooler:") for k, *_ in moves):
        from transferlab.recipes.init import sync_pooler_head

        if sync_pooler_head(target):
            notes.append("the pooler head's copy of the pooler was updated")
    return notes


@torch.no_grad()
def transplant(target: nn.Module, source: nn.Module, *, layers: Any = "all", roles: list[str] | None = None,
               heads: Any = None, modules: list[str] | tuple = (), on_mismatch: str | dict[str, str] = "error",
               source_name: str = "") -> dict[str, Any]:
    """Copy ``source``'s weights into ``target`` (both TransferModel, Backbone or HF model); returns the report."""
    head_moved = move_head(target, source, source_name) if "head" in modules else None
    modules = [m for m in modules if m != "head"]
    if head_moved is not None and layers is None and not modules:
        return {"source": source_name, "modules": ["head"], "moved_values": head_moved, "notes": [],
                "function_changes": False, "layers": [], "roles": [], "heads": None, "moved": [],
                "stayed_values": sum(p.numel() for p in target.parameters()) - head_moved}
    ts, ss = schema_of(target), schema_of(source)
    roles = list(roles or ALL_LAYER_ROLES)
    pairs = layer_pairs(layers, ts, ss) if (layers is not None and roles) else []
    hpairs = head_pairs(heads, ts, ss)
    if hpairs is not None:
        roles = [r for r in roles if r in ATTENTION_ROLES]
    moves, zeroed, one_sided = _layer_moves(ts, ss, pairs, roles, hpairs)
    moves += _module_moves(ts, ss, modules)
    if not moves:
        raise SpecError("transplant: the step moves nothing (no layers, roles, heads or modules selected)")
    _check_shared(ts, ss, moves)
    moved, moved_values = _copy(ts, zeroed, _fit(ts, ss, moves, on_mismatch, source_name))
    total = sum(p.numel() for p in ts.model.parameters())
    differences = _differences(ts, ss, pairs, one_sided)
    notes = differences + _side_notes(target, ts, moves)
    if head_moved is not None:
        moved_values += head_moved
        total += head_moved
        modules = [*modules, "head"]
    return {
        "source": source_name or ss.family.name, "source_family": ss.family.name, "target_family": ts.family.name,
        "source_norm_position": ss.norm, "target_norm_position": ts.norm,
        "layers": [[t, s] for t, s in pairs], "roles": roles, "heads": hpairs, "modules": list(modules),
        "moved_values": moved_values, "stayed_values": total - moved_values, "total_values": total,
        "function_changes": bool(differences), "notes": notes, "moved": moved,
    }


@torch.no_grad()
def move_head(target: nn.Module, source: nn.Module, source_name: str = "") -> int:
    """Copy ``source``'s task classifier into ``target`` when both tasks have the same label set and the
    heads the same kind and shapes; returns the values moved."""
    mine, theirs = getattr(target, "labels", None), getattr(source, "labels", None)
    if mine is None or theirs is None or not hasattr(source, "head"):
        raise SpecError("transplant.modules: head moves a task classifier between runs; give transplant.run "
                        "(a stored run), not a pretrained source")
    same = {k: mine[k] == theirs[k] for k in ("problem", "num_labels", "label_names")}
    if not all(same.values()):
        key = next(k for k, ok in same.items() if not ok)
        raise SpecError(f"transplant.modules: head: {source_name or 'the source'} ({theirs['task']}) has "
                        f"{key} {theirs[key]}, this task ({mine['task']}) has {mine[key]}; the classifier moves "
                        "only between tasks with the same label set (drop head to move the backbone only)")
    if type(target.head) is not type(source.head):
        raise SpecError(f"transplant.modules: head: the source's head is {source.head.name!r}, this run's "
                        f"{target.head.name!r}; use the same head.name")
    own, theirs_sd = target.head.state_dict(), source.head.state_dict()
    bad = [k for k in own if k not in theirs_sd or own[k].shape != theirs_sd[k].shape]
    if bad:
        raise SpecError(f"transplant.modules: head: {bad[0]} differs in shape between the source's head and this "
                        "run's (head options or hidden size differ)")
    target.head.load_state_dict(theirs_sd)
    return sum(v.numel() for v in own.values())


def _check_shared(ts: ModelSchema, ss: ModelSchema, moves: list) -> None:
    """Layers that share one set of weights (ALBERT) cannot take different source layers."""
    written: dict[tuple, tuple] = {}
    for tk, sk, th, sh, _ in moves:
        if not tk.startswith("layers.") or not ts.shared:
            continue
        where = (*ts.slots[tk][0:1], ts.slots[tk][1].part, th)
        src = (sk.split(".")[1], ss.slots[sk][0], ss.slots[sk][1].part, sh)  # the same tensor read twice is fine
        if written.setdefault(where, src)[1:] != src[1:]:
            raise ModelError(f"transplant: {ts.family.name} layers {ts.shared_with(int(tk.split('.')[1]))} share one "
                             f"set of weights; they cannot take both source layer {written[where][0]} and {src[0]}: "
                             "map one target layer of the group")


# ---------------------------------------------------------------- sources and spec steps


def load_source(step, store=None) -> tuple[nn.Module, str]:
    """The model a TransplantSpec step copies from, and a name for the report."""
    from transferlab.models.artifacts import load_run_model
    from transferlab.models.backbone import load_backbone
    from transferlab.spec import ModelSpec
    from transferlab.store import Store

    if step.run is not None:
        if step.store is not None and not Path(step.store).is_file():
            raise ModelError(f"transplant.store: {step.store} does not exist")
        source_store = Store(step.store) if step.store is not None else store
        if source_store is None:
            raise SpecError("transplant.run: give transplant.store (the store that holds the run)")
        row = source_store.get(step.run)
        model, _ = load_run_model(source_store, step.run)
        return model, f"run {row.uid}"
    try:
        backbone = load_backbone(ModelSpec(name=step.source, max_length=1))
    except UserError:
        raise
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        raise ModelError(f"transplant.source: {step.source!r} cannot be loaded (missing or corrupted "
                         f"checkpoint?): {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return backbone, step.source


def apply_transplants(model: nn.Module, steps: list, store=None) -> list[dict[str, Any]]:
    """Run the spec's transplant steps in order; one report each."""
    reports = []
    for step in steps:
        source, name = load_source(step, store)
        reports.append(transplant(model, source, layers=step.layers, roles=step.roles, heads=step.heads,
                                  modules=step.modules, on_mismatch=step.on_mismatch, source_name=name))
    return reports


@SECTION_CHECKS.register("TransplantSpec")
def check_step(step) -> None:
    """Spec-time check of a TransplantSpec (no model needed)."""
    if (step.source is None) == (step.run is None):
        raise SpecError("transplant: give exactly one of source (HF id, folder, alias) or run (a stored run)")
    if step.store is not None and step.run is None:
        raise SpecError("transplant.store: only used with transplant.run")
    check_roles(step.roles, [m for m in step.modules if m != "head"], "transplant")
    if "head" in step.modules and step.run is None:
        raise SpecError("transplant.modules: head moves the task classifier of a stored run; give transplant.run")
    modes = step.on_mismatch.items() if isinstance(step.on_mismatch, dict) else [("", step.on_mismatch)]
    for role, mode in modes:
        if role and role not in (*ALL_LAYER_ROLES, *GLOBAL_ROLES, "default"):
            raise SpecError(f"transplant.on_mismatch: unknown role {role!r}; roles: "
                            f"{', '.join((*ALL_LAYER_ROLES, *GLOBAL_ROLES, 'default'))}")
        if mode not in MISMATCH_MODES:
            raise SpecError(f"transplant.on_mismatch: {mode!r} is not allowed; allowed: {', '.join(MISMATCH_MODES)}")
    layers = step.layers
    if isinstance(layers, dict):
        for t, s in layers.items():
            _index(t, "transplant.layers"), _index(s, "transplant.layers")
    elif layers is not None and layers != "all":
        items = layers.split(",") if isinstance(layers, str) else layers if isinstance(layers, list) else [layers]
        for item in items:
            for side in (item.split("<-") if isinstance(item, str) else [item]):
                layer_tokens(side, "transplant.layers")


def prepare_transfer(model: nn.Module, spec, store=None, folder: Path | None = None) -> dict[str, Any]:
    """A run's init (spec.init, seeded by spec.seed) then its transplant steps. The full reports go to
    ``folder/transfer.json``; the returned summary (what moved, notes) goes into the run's summary."""
    import json

    init = apply_init(model, spec.init, seed=spec.seed)
    reports = apply_transplants(model, spec.transplant, store)
    if not init and not reports:
        return {}
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "transfer.json").write_text(json.dumps({"init": init, "transplant": reports}, indent=1))
    brief = [{k: r[k] for k in ("source", "layers", "roles", "heads", "modules", "moved_values", "stayed_values",
                                "function_changes", "notes")} for r in reports]
    return {"transfer": {"init_values": init.get("values", 0), "transplant": brief}}
