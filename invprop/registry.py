"""A registry: the implementations of one kind of extension, by name.

    BACKBONES: Registry[BackboneBuilder] = Registry("backbone", names.BACKBONES)

    @BACKBONES.register("small_cnn")
    def small_cnn(in_channels: int) -> nn.Module: ...

A registry is a dict whose keys may only be names its kind lists in `invprop.names`, the
list params are validated against: registering any other name fails at import, naming
the list to add it to. Looking up a name that is not registered raises `UnknownName`,
which lists the registered ones. Torch-free.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import TypeVar

from invprop.errors import InvpropError

__all__ = ["Registry", "UnknownName"]

T = TypeVar("T")


class UnknownName(InvpropError, KeyError, ValueError):
    """A name no entry of a registry has: a missing key, a bad value, and a mistake the
    user can fix (the CLI prints it as one line)."""

    def __str__(self) -> str:
        return str(self.args[0])  # KeyError would print the message quoted


class Registry(dict[str, T]):
    """Implementations of one kind (`kind`, e.g. "backbone"), keyed by the names listed in
    `allowed` (a list of `invprop.names`). `hint` is added to an unknown name's error."""

    def __init__(self, kind: str, allowed: Collection[str], hint: str = "") -> None:
        super().__init__()
        self.kind = kind
        self.allowed = tuple(allowed)
        self.hint = hint

    def add(self, name: str, entry: T) -> T:
        """Register `entry` under `name`; returns `entry`."""
        if name not in self.allowed:
            raise ValueError(
                f"{self.kind} {name!r} is not declared: add it to its list in "
                f"invprop/names.py ({', '.join(self.allowed)}), so that params accept it"
            )
        if name in self:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of `add`: ``@REGISTRY.register("name")``."""

        def decorator(entry: T) -> T:
            return self.add(name, entry)

        return decorator

    def unknown(self, name: str) -> UnknownName:
        """The error for a name that is not registered, listing the registered ones."""
        return UnknownName(
            f"unknown {self.kind} {name!r}; allowed: {', '.join(sorted(self))}{self.hint}"
        )

    def __missing__(self, name: str) -> T:
        raise self.unknown(name)
