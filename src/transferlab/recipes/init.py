"""Init schemes applied to a selection of canonical tensors, and re-init of the top layers.

    report = apply_init(model, spec.init, seed=spec.seed)

``spec.init.reinit_layers: L`` re-initialises the top L layers (and, with ``reinit_pooler``, the
pooler) as BERT initialises them: weights N(0, initializer_range), biases 0, LayerNorm (1, 0)
(Zhang et al. 2021, "Revisiting Few-sample BERT Fine-tuning"). ``spec.init.rules`` then apply
schemes in order to what each rule's ``select`` picks::

    select:                 (any mix; the union is selected)
      layers: all | top:2 | bottom:1 | 3 | "2-4" | "0,5" | [0, 5]
      roles: [q, k, v, o, attn_ln, ffn_in, ffn_out, ffn_ln]     (default: all, when layers/heads given)
      heads: [0, 3]                                              (rows of q, k, v; columns of o)
      modules: [embeddings, positions, embed_norm, final_norm, pooler]
      patterns: ["layers.*.q.*", "embeddings:*word*"]            (globs over canonical keys)

A scheme fills a fresh tensor of the canonical shape (so fans are the whole matrix's, also when
only one head is written) from a generator seeded by the run's seed. Schemes that re-initialise
(``normal``, ``xavier_*``, ``kaiming_*``, ``uniform``) treat matrices and embeddings with their
rule, set biases to 0 and LayerNorms to (1, 0); ``zero_bias`` and ``layernorm`` touch only those.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from transferlab.errors import SpecError
from transferlab.models.schema import ALL_LAYER_ROLES, ATTENTION_ROLES, GLOBAL_ROLES, ModelSchema, schema_of
from transferlab.registry import Registry
from transferlab.spec import SECTION_CHECKS

# ---------------------------------------------------------------- schemes


@dataclass(frozen=True)
class Scheme:
    """``fill(t, kind, options, generator)`` writes new values into ``t`` and returns True, or returns
    False to leave that tensor as it is; ``options`` lists the allowed option keys and defaults."""

    fill: Callable[[Tensor, str, dict, torch.Generator], bool]
    options: dict[str, Any] = field(default_factory=dict)


INIT_SCHEMES: Registry[Scheme] = Registry("init scheme")


def _reinit(matrix: Callable[[Tensor, dict, torch.Generator], None]) -> Callable:
    """A full re-init: ``matrix`` for weights of 2+ dims, N(0, std) for other vectors, biases 0, norms (1, 0)."""

    def fill(t: Tensor, kind: str, opts: dict, gen: torch.Generator) -> bool:
        if kind in ("bias", "norm_bias"):
            t.zero_()
        elif kind == "norm_weight":
            t.fill_(1.0)
        elif t.dim() >= 2:
            matrix(t, opts, gen)
        else:
            nn.init.normal_(t, std=opts["std"], generator=gen)
        return True

    return fill


def _register(name: str, fill: Callable, **options: Any) -> None:
    INIT_SCHEMES.register(name)(Scheme(fill, {"std": None, **options}))


_register("pretrained", lambda t, kind, opts, gen: False)
_register("normal", _reinit(lambda t, o, g: nn.init.normal_(t, std=o["std"], generator=g)))
_register("xavier_uniform", _reinit(lambda t, o, g: nn.init.xavier_uniform_(t, gain=o["gain"], generator=g)),
          gain=1.0)
_register("xavier_normal", _reinit(lambda t, o, g: nn.init.xavier_normal_(t, gain=o["gain"], generator=g)),
          gain=1.0)
_register("kaiming_uniform", _reinit(lambda t, o, g: nn.init.kaiming_uniform_(
    t, a=o["a"], mode=o["mode"], nonlinearity=o["nonlinearity"], generator=g)), a=0.0, mode="fan_in",
    nonlinearity="leaky_relu")
_register("kaiming_normal", _reinit(lambda t, o, g: nn.init.kaiming_normal_(
    t, a=o["a"], mode=o["mode"], nonlinearity=o["nonlinearity"], generator=g)), a=0.0, mode="fan_in",
    nonlinearity="leaky_relu")
_register("uniform", _reinit(lambda t, o, g: nn.init.uniform_(t, -o["a"], o["a"], generator=g)), a=0.05)


def _zero_bias(t: Tensor, kind: str, opts: dict, gen) -> bool:
    if kind in ("bias", "norm_bias"):
        t.zero_()
        return True
    return False


def _layernorm(t: Tensor, kind: str, opts: dict, gen) -> bool:
    if kind == "norm_weight":
        t.fill_(1.0)
    elif kind == "norm_bias":
        t.zero_()
    else:
        return False
    return True


_register("zero_bias", _zero_bias)
_register("layernorm", _layernorm)


def scheme_options(scheme: str, options: dict[str, Any], where: str = "init") -> dict[str, Any]:
    """The scheme's options with defaults filled in; unknown keys are a SpecError listing the allowed ones."""
    allowed = INIT_SCHEMES.get(scheme, f"{where}.scheme").options
    unknown = [k for k in options if k not in allowed]
    if unknown:
        listing = ", ".join(f"{k} (default {v})" for k, v in allowed.items())
        raise SpecError(f"{where}.options.{unknown[0]}: unknown option for init scheme {scheme!r}; allowed: {listing}")
    return {**allowed, **options}


# ---------------------------------------------------------------- selections


@dataclass
class Selection:
    layers: Any = None
    roles: list[str] | None = None
    heads: list[int] | None = None
    modules: list[str] = field(default_factory=list)
    patterns: list[str] = field(default_factory=list)


_LAYER_TOKEN = re.compile(r"^(?:all|(?:top|bottom):\d+|\d+(?:-\d+)?)$")


def layer_tokens(value: Any, where: str) -> list[str]:
    """``3``, ``"2-4"``, ``"top:2"``, ``"0,5"``, ``[0, "3-4"]`` -> tokens (checked for syntax only)."""
    items = value if isinstance(value, (list, tuple)) else [value]
    tokens = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise SpecError(f"{where}: {item!r} is not a layer (use 3, \"2-4\", \"top:2\", \"all\" or a list)")
        for tok in str(item).replace(" ", "").split(","):
            if not _LAYER_TOKEN.match(tok):
                raise SpecError(f"{where}: {tok!r} is not a layer (use 3, \"2-4\", \"top:2\", \"bottom:1\" or \"all\")")
            tokens.append(tok)
    return tokens


def resolve_layers(value: Any, num_layers: int, where: str, family: str = "the model") -> list[int]:
    """Layer indices (0-based, from the input) named by ``value``; an unknown index names the ones that exist."""
    out: list[int] = []
    for tok in layer_tokens(value, where):
        if tok == "all":
            idx = list(range(num_layers))
        elif ":" in tok:
            side, n = tok.split(":")
            if not 0 < int(n) <= num_layers:
                raise SpecError(f"{where}: {tok!r} asks for {n} layers but {family} has {num_layers} "
                                f"(0-{num_layers - 1})")
            idx = list(range(num_layers - int(n), num_layers)) if side == "top" else list(range(int(n)))
        else:
            lo, _, hi = tok.partition("-")
            idx = list(range(int(lo), int(hi or lo) + 1))
            bad = [i for i in idx if i >= num_layers]
            if bad or not idx:
                raise SpecError(f"{where}: layer {bad[0] if bad else tok} does not exist; {family} has layers "
                                f"0-{num_layers - 1}")
        out += [i for i in idx if i not in out]
    return out


def check_roles(roles, modules, where: str) -> None:
    """Every name in ``roles`` is a layer role and every name in ``modules`` a model-wide one."""
    for role in roles or ():
        if role not in ALL_LAYER_ROLES:
            raise SpecError(f"{where}.roles: unknown role {role!r}; layer roles: {', '.join(ALL_LAYER_ROLES)}")
    for module in modules:
        if module not in GLOBAL_ROLES:
            raise SpecError(f"{where}.modules: unknown module {module!r}; modules: {', '.join(GLOBAL_ROLES)}")


def parse_selection(select: dict[str, Any], where: str) -> Selection:
    """Check a ``select`` mapping without a model: keys, roles, modules, layer syntax."""
    from transferlab.spec import spec_from_dict

    try:
        sel = spec_from_dict(select or {}, Selection)
    except SpecError as e:
        raise SpecError(f"{where}: {e}") from None
    if sel.layers is not None:
        layer_tokens(sel.layers, f"{where}.layers")
    check_roles(sel.roles, sel.modules, where)
    if sel.heads is not None and sel.roles and not set(sel.roles) & set(ATTENTION_ROLES):
        raise SpecError(f"{where}.heads: heads live in q, k, v, o but roles are {sel.roles}")
    if not (sel.layers is not None or sel.roles or sel.heads is not None or sel.modules or sel.patterns):
        raise SpecError(f"{where}: selects nothing; give layers, roles, heads, modules or patterns")
    return sel


def select(schema: ModelSchema, selection: dict[str, Any], where: str = "select") -> list[tuple[str, int | None]]:
    """(canonical key, head or None) pairs picked by ``selection`` in ``schema``'s model."""
    sel = parse_selection(selection, where)
    family = schema.family.name
    layers: list[int] = []
    if sel.layers is not None:
        layers = resolve_layers(sel.layers, schema.num_layers, f"{where}.layers", family)
    elif sel.roles or sel.heads is not None:
        layers = list(range(schema.num_layers))
    roles = [r for r in (sel.roles or ALL_LAYER_ROLES) if sel.heads is None or r in ATTENTION_ROLES]
    for h in sel.heads or ():
        if not 0 <= h < schema.num_heads:
            raise SpecError(f"{where}.heads: head {h} does not exist; {family} has heads 0-{schema.num_heads - 1}")
    picks: list[tuple[str, int | None]] = []
    for i in layers:
        for role in roles:
            for part in ("weight", "bias"):
                key = schema.layer_key(i, role, part)
                if key not in schema.slots:  # a role or bias this family (or this layer) does not have
                    continue
                if sel.heads is None:
                    picks.append((key, None))
                elif key.split(".")[2:] != ["o", "bias"]:  # o's bias is shared by all heads
                    picks += [(key, h) for h in sel.heads]
    if sel.roles and layers and not picks:
        raise SpecError(f"{where}.roles: {family} has no {', '.join(sel.roles)} in layers {layers}")
    for module in sel.modules:
        keys = schema.keys(f"{module}:*")
        if not keys:
            have = sorted({k.split(":")[0] for k in schema.slots if ":" in k})
            raise SpecError(f"{where}.modules: {family} has no {module}; it has {', '.join(have)}")
        picks += [(k, None) for k in keys]
    for pattern in sel.patterns:
        keys = schema.keys(pattern)
        if not keys:
            raise SpecError(f"{where}.patterns: {pattern!r} matches no parameter of {family}; keys look like "
                            f"{', '.join(list(schema.slots)[:3])}, ... and layers.0.q.weight")
        picks += [(k, None) for k in keys]
    return list(dict.fromkeys(picks))


# ---------------------------------------------------------------- applying


@torch.no_grad()
def apply_scheme(schema: ModelSchema, picks: list[tuple[str, int | None]], scheme: str, options: dict,
                 generator: torch.Generator) -> dict[str, Any]:
    """Fill the picked tensors (or heads) with ``scheme``; returns what changed."""
    opts = scheme_options(scheme, options)
    if opts.get("std") is None:
        opts["std"] = float(getattr(schema.config, "initializer_range", 0.02))
    fill = INIT_SCHEMES.get(scheme).fill
    fresh: dict[str, Tensor | None] = {}
    tensors, values = [], 0
    for key, head in picks:
        if key not in fresh:
            view = schema.view(key)
            t = torch.empty(view.shape, dtype=torch.float32)
            fresh[key] = t if fill(t, schema.kind(key), opts, generator) else None
        new = fresh[key]
        if new is None:
            continue
        target = schema.view(key) if head is None else schema.head_view(key, head)
        part = new if head is None else schema.head_part(key, head, new)
        target.copy_(part.to(target.dtype))
        tensors.append(key if head is None else f"{key}[head {head}]")
        values += part.numel()
    return {"scheme": scheme, "options": {k: v for k, v in opts.items() if v is not None}, "tensors": len(tensors),
            "values": values}


def init_rules(spec, schema: ModelSchema) -> list[tuple[dict, str, dict]]:
    """(select, scheme, options) in order: the re-init of the top layers and pooler, then ``spec.rules``."""
    rules = []
    std = {"std": spec.std} if spec.std is not None else {}
    if spec.reinit_layers:
        if not 0 < spec.reinit_layers <= schema.num_layers:
            raise SpecError(f"init.reinit_layers: {spec.reinit_layers} is not in 1..{schema.num_layers} "
                            f"({schema.family.name} has {schema.num_layers} layers)")
        rules.append(({"layers": f"top:{spec.reinit_layers}"}, "normal", std))
        if spec.reinit_pooler and schema.has_role("pooler"):
            rules.append(({"modules": ["pooler"]}, "normal", std))
    rules += [(r.select, r.scheme, r.options) for r in spec.rules]
    return rules


def apply_init(model: nn.Module, spec, seed: int = 0) -> dict[str, Any]:
    """Apply ``spec`` (an InitSpec) to ``model``; returns a report (one entry per rule)."""
    if not spec.reinit_layers and not spec.rules:
        return {}  # nothing to do: no schema needed (an LSTM baseline, a family without one)
    schema = schema_of(model)
    rules = init_rules(spec, schema)
    if not rules:
        return {}
    gen = torch.Generator().manual_seed(seed)
    report: dict[str, Any] = {"rules": []}
    touched_pooler = False
    written: list[str] = []
    for i, (sel, scheme, options) in enumerate(rules):
        picks = select(schema, sel, f"init rule {i} select")
        written += [k for k, _ in picks]
        entry = apply_scheme(schema, picks, scheme, options, gen)
        report["rules"].append({"select": sel, **entry})
        touched_pooler |= any(k.startswith("pooler:") for k, _ in picks) and entry["tensors"] > 0
    report["values"] = sum(r["values"] for r in report["rules"])
    shared = shared_note(schema, written)
    if shared:
        report["shared"] = shared
    if touched_pooler:
        report["head_pooler_synced"] = sync_pooler_head(model)
    return report


def shared_note(schema: ModelSchema, keys: list[str]) -> str:
    """A note when ``keys`` touch a layer whose weights other layers share (ALBERT); "" otherwise."""
    layers = sorted({int(k.split(".")[1]) for k in keys if k.startswith("layers.")})
    groups = [g for g in schema.shared if set(g) & set(layers)]
    if not groups:
        return ""
    spans = "; ".join(f"layers {g[0]}-{g[-1]}" for g in groups)
    return (f"{schema.family.name} layers share weights: writing layer(s) {layers} changed every layer of "
            f"their group ({spans})")


@torch.no_grad()
def sync_pooler_head(model: nn.Module) -> bool:
    """A ``pooler`` head holds a copy of the backbone's pooler; after the pooler changes, copy it again."""
    from transferlab.models.heads import pooler_dense

    head, backbone = getattr(model, "head", None), getattr(model, "backbone", None)
    dense = pooler_dense(getattr(backbone, "pooler", None))
    if not getattr(head, "takes_pooler", False) or dense is None:
        return False
    head.dense.load_state_dict(dense.state_dict())
    return True


@SECTION_CHECKS.register("InitRule")
def check_rule(rule) -> None:
    """Spec-time check of an InitRule (no model needed)."""
    scheme_options(rule.scheme, rule.options, "init.rules[]")
    parse_selection(rule.select, "init.rules[].select")

