"""Equality, repr and replace() for classes that write their own __init__.

A dataclass generates and compiles its methods when its module is imported, about 5 M
instructions each; the four that every plan makes (Diagnostic, Inferred, LayerPlan, Plan) took
a twentieth of a command's start-up above the floor. Each declares its fields in ``_fields``,
in its __init__'s order, and gets here what a dataclass would give it."""

from __future__ import annotations


class Record:
    __slots__ = ()
    _fields: tuple[str, ...] = ()
    _compared: tuple[str, ...] | None = None  # the fields __eq__ compares (default: all)

    def _key(self) -> tuple:
        return tuple(getattr(self, name) for name in self._compared or self._fields)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._key() == other._key()  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]  # mutable, as a dataclass is

    def __repr__(self) -> str:
        values = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__qualname__}({values})"

    def replace(self, **changes):
        """A copy with ``changes`` (as dataclasses.replace)."""
        unknown = changes.keys() - set(self._fields)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field {min(unknown)!r}")
        values = {name: getattr(self, name) for name in self._fields}
        return type(self)(**{**values, **changes})
