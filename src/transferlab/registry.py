"""One small registry used for every kind of part (heads, tasks, optimizers, ...), with typed capabilities.

    @dataclass(frozen=True)
    class HeadCaps:                                  # one frozen dataclass per registry kind (timm's OptimInfo)
        fused: bool = False

    HEADS = Registry("head", HeadCaps)

    @HEADS.register("mean", fused=True)              # capability flags: fields of HeadCaps
    class MeanHead(Head): ...

    HEADS.get("mean")                 # -> MeanHead, or a SpecError listing the known names
    HEADS.caps("mean")                # -> HeadCaps(fused=True)
    HEADS.supports("mean", "fused")   # -> True

Capabilities are declared where a part is registered, never decided by a list of names elsewhere:
the engine refuses or falls back by the flag and names it. A flag the kind does not declare is an
error, at registration (``ValueError``: a programming mistake) and at ``supports()`` (``KeyError``):
a typo never reads as "not supported". A kind without a caps class takes no flags.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from transferlab.errors import SpecError

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class NoCaps:
    """The capabilities of a kind that declares none."""


class Registry(Generic[T]):
    def __init__(self, kind: str, caps: type = NoCaps):
        if not (dataclasses.is_dataclass(caps) and caps.__dataclass_params__.frozen):  # type: ignore[attr-defined]
            raise TypeError(f"{kind}: capabilities must be a frozen dataclass, not {caps!r}")
        self.kind, self.caps_type = kind, caps
        self.flags = tuple(f.name for f in dataclasses.fields(caps))
        self._items: dict[str, T] = {}
        self._caps: dict[str, Any] = {}
        self._canonical: dict[str, str] = {}

    def register(self, name: str, *aliases: str, **caps: Any) -> Callable[[T], T]:
        unknown = sorted(set(caps) - set(self.flags))
        if unknown:
            raise ValueError(f"{self.kind} {name!r}: unknown capability flag {unknown[0]!r}; "
                             f"{self.caps_type.__name__} declares: {', '.join(self.flags) or 'none'}")
        declared = self.caps_type(**caps)

        def add(obj: T) -> T:
            for key in (name, *aliases):
                if key in self._items:
                    raise ValueError(f"{self.kind} {key!r} is registered twice")
                self._items[key] = obj
                self._caps[key] = declared
                self._canonical[key] = name
            return obj

        return add

    def get(self, name: str, field: str | None = None) -> T:
        try:
            return self._items[name]
        except KeyError:
            where = f"{field}: " if field else ""
            raise SpecError(
                f"{where}unknown {self.kind} {name!r}; known: {', '.join(self.names())}"
            ) from None

    def caps(self, name: str) -> Any:
        """The capabilities declared when ``name`` was registered: an instance of the kind's caps class."""
        self.get(name)
        return self._caps[name]

    def supports(self, name: str, flag: str) -> bool:
        """The flag's value for ``name``; a flag this kind does not declare raises KeyError."""
        if flag not in self.flags:
            raise KeyError(f"{self.kind}: unknown capability flag {flag!r}; "
                           f"{self.caps_type.__name__} declares: {', '.join(self.flags) or 'none'}")
        return bool(getattr(self.caps(name), flag))

    def canonical(self, name: str) -> str:
        """The name an alias was registered under."""
        self.get(name)
        return self._canonical[name]

    def primary_names(self) -> list[str]:
        """Registered names without their aliases."""
        return sorted(set(self._canonical.values()))

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
