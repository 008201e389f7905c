"""Components registered by name (models, quantizers, data sets, fault models)."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from qfi_cli.errors import QfiError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> builder table with a decorator for registration.

    >>> shapes = Registry("shape")
    >>> @shapes.register("square")
    ... def square(side=1):
    ...     return side * side
    >>> shapes.get("square")(side=3), shapes.names()
    (9, ['square'])
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = item
            return item

        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise QfiError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def values(self) -> list[T]:
        """The registered items, in the order they were registered."""
        return list(self._items.values())

    def __contains__(self, name: object) -> bool:
        return name in self._items
