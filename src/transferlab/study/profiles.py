"""Size profiles of a study file: one design, a CPU size and a GPU size (``transferlab run STUDY --profile cpu``).

    profiles:
      cpu: {base.train.epochs: 2, base.task.few_sample: 200, seeds: {start: 0, stop: 5}}
      gpu: {base.train.epochs: 10, seeds: {start: 0, stop: 20}, lr_search.grid: [1e-5, 2e-5, 5e-5]}

A profile's keys are the dotted keys ``--set`` takes (``base.<run spec field>``, ``arms.<arm>.<field>``,
``grid.<field>``, ``seeds``, ``lr_search.grid``, ...); each value replaces what is there, a mapping as a
whole. The profile applies before ``--set``. The chosen profile is part of the study's identity: the study
is stored as ``<study>@<profile>``, so both sizes live side by side in one store and are reported apart.
A file with profiles run without ``--profile`` runs as written (its ``base``, ``seeds`` ...).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from transferlab.errors import SpecError
from transferlab.spec import apply_overrides, check_plain
from transferlab.study.fields import check_field

RUN_SPEC_SECTIONS = ("base", "grid")  # base.<field>, grid.<field>; arms.<arm>.<field>


def split_profiles(data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The study data without ``profiles``, and the declared profiles (name -> dotted overrides), checked for
    shape (a mapping of mappings)."""
    data = dict(data)
    profiles = data.pop("profiles", None) or {}
    if not isinstance(profiles, dict) or any(not isinstance(v, dict) for v in profiles.values()):
        raise SpecError("profiles: expected a mapping of profile name -> {dotted.key: value}, e.g. "
                        "{cpu: {base.train.epochs: 2}, gpu: {base.train.epochs: 10}}")
    return data, profiles


def check_profile_key(key: str, where: str, study_cls: type) -> None:
    """``key`` names a field of ``study_cls`` (StudySpec), or a run spec field under base/arms/grid; a SpecError
    naming it otherwise."""
    head, _, rest = str(key).partition(".")
    fields = {f.name: f for f in dataclasses.fields(study_cls)}
    if head not in fields or head == "study":
        names = ", ".join(n for n in fields if n != "study")
        raise SpecError(f"{where}: unknown field {key!r}; a profile sets study fields ({names}) as dotted keys, "
                        "e.g. base.train.epochs")
    if not rest:
        return
    if head in RUN_SPEC_SECTIONS:
        check_field(rest, f"{where} ({head})")
    elif head == "arms":
        arm, _, field = rest.partition(".")
        if field:
            check_field(field, f"{where} (arms.{arm})")
    else:
        section = _section_class(study_cls, head)
        if section is None:
            raise SpecError(f"{where}: {head!r} is a value, not a section (in {key!r})")
        names = [f.name for f in dataclasses.fields(section)]
        if rest.split(".")[0] not in names:
            raise SpecError(f"{where}: unknown field {key!r}; known fields of {head}: {', '.join(names)}")


def _section_class(study_cls: type, name: str) -> type | None:
    import typing

    tp = typing.get_type_hints(study_cls)[name]
    for candidate in (tp, *typing.get_args(tp)):
        if dataclasses.is_dataclass(candidate):
            return candidate
    return None


def apply_profile(data: dict[str, Any], profile: str | None, study_cls: type) -> dict[str, Any]:
    """The study data with the chosen profile applied and ``profiles`` removed; the study renamed
    ``<study>@<profile>``. ``profile`` None: the file as written (its profiles checked all the same)."""
    data, profiles = split_profiles(data)
    for name, overrides in profiles.items():  # every profile's keys, not only the chosen one's: a typo in the
        check_plain(overrides, f"profiles.{name}")  # gpu profile shows on the CPU machine too
        for key in overrides:
            check_profile_key(key, f"profiles.{name}", study_cls)
    if profile is None:
        return data
    if not profiles:
        raise SpecError(f"--profile {profile}: the study declares no profiles (add a `profiles:` section)")
    if profile not in profiles:
        raise SpecError(f"--profile {profile}: unknown profile; the study declares: {', '.join(profiles)}")
    data = apply_overrides(data, {str(k): v for k, v in profiles[profile].items()})
    if isinstance(data.get("study"), str) and data["study"].strip():
        data["study"] = f"{data['study']}@{profile}"
    return data


def profile_names(data: dict[str, Any]) -> list[str]:
    return list(split_profiles(data)[1])
