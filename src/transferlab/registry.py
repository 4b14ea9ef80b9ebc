"""One small registry used for every kind of part (heads, tasks, optimizers, ...).

    HEADS = Registry("head")

    @HEADS.register("mean", seed_stacked=True)      # capabilities: keyword flags, read by the engine
    class MeanHead(Head): ...

    HEADS.get("mean")         # -> MeanHead, or a SpecError listing the known names
    HEADS.caps("mean")        # -> {"seed_stacked": True}
    HEADS.supports("mean", "seed_stacked")   # -> True

Capabilities are declared where a part is registered (timm's ``OptimInfo`` idea), never decided
by a list of names elsewhere: the engine refuses or falls back by the flag and names it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from transferlab.errors import SpecError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._caps: dict[str, dict[str, Any]] = {}
        self._canonical: dict[str, str] = {}

    def register(self, name: str, *aliases: str, **caps: Any) -> Callable[[T], T]:
        def add(obj: T) -> T:
            for key in (name, *aliases):
                if key in self._items:
                    raise ValueError(f"{self.kind} {key!r} is registered twice")
                self._items[key] = obj
                self._caps[key] = dict(caps)
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

    def caps(self, name: str) -> dict[str, Any]:
        """The capability flags declared when ``name`` was registered (unknown name: SpecError)."""
        self.get(name)
        return dict(self._caps[name])

    def supports(self, name: str, flag: str) -> bool:
        return bool(self.caps(name).get(flag, False))

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
