"""The run-spec fields a study file may name (grid axes, arm overrides, search spaces) and its seed lists:
checks shared by study/spec.py and study/search_space.py, below both."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from transferlab.errors import SpecError
from transferlab.spec import RunSpec

MAX_SEEDS = 100_000


def resolve_seeds(value: Any, where: str) -> list[int]:
    """A seed list from ``[0, 1, 2]`` or ``{start: 0, stop: 10}`` (stop excluded, as in range)."""
    if isinstance(value, dict):
        unknown = [k for k in value if k not in ("start", "stop", "step")]
        if unknown or "stop" not in value:
            raise SpecError(f"{where}: a range is {{start: 0, stop: 10, step: 1}} (stop excluded), got {value!r}")
        try:
            seeds = range(int(value.get("start", 0)), int(value["stop"]), int(value.get("step", 1)))
        except (TypeError, ValueError):
            raise SpecError(f"{where}: range bounds must be integers, got {value!r}") from None
        if len(seeds) > MAX_SEEDS:
            raise SpecError(f"{where}: {len(seeds)} seeds; at most {MAX_SEEDS} per study")
        value = list(seeds)
    if not isinstance(value, list) or any(isinstance(s, bool) or not isinstance(s, int) for s in value):
        raise SpecError(f"{where}: expected a list of integer seeds or {{start, stop}}, got {value!r}")
    if not value:
        raise SpecError(f"{where}: the seed list is empty; give at least one seed")
    if len(set(value)) != len(value):
        raise SpecError(f"{where}: seeds repeat: {value}")
    if bad := [s for s in value if not 0 <= s < 2**32]:
        raise SpecError(f"{where}: seed {bad[0]} is outside [0, 2**32)")
    return value


def check_field(path: str, where: str) -> None:
    """Raise a SpecError unless ``path`` (dotted) names a run spec field; a dict field takes any sub-key."""
    cls: Any = RunSpec
    parts = path.split(".")
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(cls):
            if typing.get_origin(cls) is dict or cls is dict:
                return  # options-like mappings take any key
            raise SpecError(f"{where}: {'.'.join(parts[:i])!r} is a value, not a section (in {path!r})")
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            section = ".".join(parts[:i]) or "the run spec"
            raise SpecError(f"{where}: unknown field {path!r}; known fields of {section}: {', '.join(names)}")
        cls = _field_type(cls, part)


def _field_type(cls: type, name: str) -> Any:
    tp = typing.get_type_hints(cls)[name]
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    sections = [a for a in args if dataclasses.is_dataclass(a)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(sections) == 1:
        return sections[0]  # e.g. intermediate: a section, or "none"
    return tp
