"""Filters over attributes stored in an index: ``evidex.F("tenant") == 7``.

An expression is built from field references and combined with ``&``, ``|`` and
``~``; the index evaluates it into the set of allowed elements before a search
starts (from its posting lists), so the planner knows how many are allowed::

    index.add(vectors, ids, attributes={"tenant": tenants, "year": years})
    f = (F("tenant") == 7) & F("year").between(2019, 2023) & ~F("tag").isin([3, 4])
    ids, dists = index.search(queries, k=10, filter=f)

A comparison never matches an element that has no value for its field (as in
SQL); ``~`` complements within the index, so ``~(F("x") == 1)`` also matches
elements without an ``x``. ``F("x") != 1`` matches only elements that have an
``x`` other than 1. Integer fields compare exactly (bounds like ``2.5`` round to
the integers they admit); float fields compare as float64.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["F", "Expr"]

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


class Expr:
    """A filter expression; combine with ``&`` (and), ``|`` (or), ``~`` (not)."""

    def __and__(self, other: Expr) -> Expr:
        return _Join("and", self, _expr(other))

    def __or__(self, other: Expr) -> Expr:
        return _Join("or", self, _expr(other))

    def __invert__(self) -> Expr:
        return _Not(self)

    def __bool__(self) -> bool:
        # `a and b` / `not a` would silently keep one side: refuse it.
        raise TypeError("combine filter expressions with &, | and ~, not and / or / not")

    def compile(self, fields: Mapping[str, str]) -> list[tuple]:
        """The postfix program the compiled index evaluates (``fields``: name -> kind)."""
        out: list[tuple] = []
        self._emit(fields, out)
        return out

    def _emit(self, fields: Mapping[str, str], out: list[tuple]) -> None:
        raise NotImplementedError


def _expr(x: Any) -> Expr:
    if not isinstance(x, Expr):
        raise TypeError(f"expected a filter expression, got {type(x).__name__}")
    return x


class _Join(Expr):
    def __init__(self, op: str, a: Expr, b: Expr) -> None:
        self.op, self.a, self.b = op, a, b

    def _emit(self, fields, out):
        self.a._emit(fields, out)
        self.b._emit(fields, out)
        out.append((self.op,))

    def __repr__(self) -> str:
        return f"({self.a!r} {'&' if self.op == 'and' else '|'} {self.b!r})"


class _Not(Expr):
    def __init__(self, a: Expr) -> None:
        self.a = a

    def _emit(self, fields, out):
        self.a._emit(fields, out)
        out.append(("not",))

    def __repr__(self) -> str:
        return f"~{self.a!r}"


def _number(v: Any, field: str) -> int | float:
    """A comparison value: a real number (bools count as 0 / 1), never NaN."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, numbers.Real):
        f = float(v)
        if math.isnan(f):
            raise ValueError(f"cannot compare attribute {field!r} with NaN")
        return f
    raise TypeError(f"attribute {field!r} compares with numbers, got {type(v).__name__}")


def _kind(fields: Mapping[str, str], name: str) -> str:
    kind = fields.get(name)
    if kind is None:
        known = ", ".join(sorted(fields)) or "none"
        raise ValueError(f"unknown attribute {name!r}; the index has: {known}")
    return kind


class _In(Expr):
    def __init__(self, field: str, values: list[int | float]) -> None:
        self.field, self.values = field, values

    def _emit(self, fields, out):
        if _kind(fields, self.field) == "int":
            # Only integral values can equal an integer field.
            ints = [int(v) for v in self.values if float(v).is_integer() or isinstance(v, int)]
            ints = [v for v in ints if _INT64_MIN <= v <= _INT64_MAX]
            out.append(("in", self.field, ints, None))
        else:
            out.append(("in", self.field, None, [float(v) for v in self.values]))

    def __repr__(self) -> str:
        if len(self.values) == 1:
            return f"(F({self.field!r}) == {self.values[0]!r})"
        return f"F({self.field!r}).isin({self.values!r})"


class _Range(Expr):
    def __init__(self, field: str, lo: float, hi: float, lo_open: bool, hi_open: bool) -> None:
        self.field, self.lo, self.hi = field, lo, hi
        self.lo_open, self.hi_open = lo_open, hi_open

    def _emit(self, fields, out):
        if _kind(fields, self.field) == "float":
            out.append(("frange", self.field, float(self.lo), float(self.hi), self.lo_open,
                        self.hi_open))  # fmt: skip
            return
        lo, hi = self.lo, self.hi
        if isinstance(lo, float):
            if math.isinf(lo):
                lo = _INT64_MIN if lo < 0 else _INT64_MAX + 1
            else:
                lo = math.floor(lo) + 1 if (self.lo_open or not lo.is_integer()) else int(lo)
        elif self.lo_open:
            lo += 1
        if isinstance(hi, float):
            if math.isinf(hi):
                hi = _INT64_MAX if hi > 0 else _INT64_MIN - 1
            else:
                hi = math.ceil(hi) - 1 if (self.hi_open or not hi.is_integer()) else int(hi)
        elif self.hi_open:
            hi -= 1
        lo, hi = max(lo, _INT64_MIN), min(hi, _INT64_MAX)
        if lo > hi:
            out.append(("in", self.field, [], None))  # admits no integer
        else:
            out.append(("irange", self.field, int(lo), int(hi)))

    def __repr__(self) -> str:
        a = "(" if self.lo_open else "["
        b = ")" if self.hi_open else "]"
        return f"F({self.field!r}) in {a}{self.lo}, {self.hi}{b}"


class F:
    """A reference to a stored attribute; comparisons give filter expressions.

    ``F("year") >= 2020``, ``F("tenant") == 7``, ``F("tenant").isin([1, 2])``,
    ``F("score").between(0.2, 0.8)``, ``F("tag").exists()``.
    """

    __hash__ = None  # type: ignore[assignment]  # == builds an expression

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"an attribute name is a non-empty str, got {name!r}")
        self.name = name

    def __repr__(self) -> str:
        return f"F({self.name!r})"

    def __eq__(self, value: Any) -> Expr:  # type: ignore[override]
        return _In(self.name, [_number(value, self.name)])

    def __ne__(self, value: Any) -> Expr:  # type: ignore[override]
        return self.exists() & ~(self == value)

    def __lt__(self, value: Any) -> Expr:
        return _Range(self.name, -math.inf, _number(value, self.name), False, True)

    def __le__(self, value: Any) -> Expr:
        return _Range(self.name, -math.inf, _number(value, self.name), False, False)

    def __gt__(self, value: Any) -> Expr:
        return _Range(self.name, _number(value, self.name), math.inf, True, False)

    def __ge__(self, value: Any) -> Expr:
        return _Range(self.name, _number(value, self.name), math.inf, False, False)

    def between(self, lo: Any, hi: Any) -> Expr:
        """``lo <= value <= hi``."""
        return _Range(self.name, _number(lo, self.name), _number(hi, self.name), False, False)

    def isin(self, values: Iterable[Any]) -> Expr:
        """The value is one of ``values``."""
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            raise TypeError(f"isin() needs an iterable of numbers, got {type(values).__name__}")
        return _In(self.name, [_number(v, self.name) for v in values])

    def exists(self) -> Expr:
        """The element has a value for this field."""
        return _Range(self.name, -math.inf, math.inf, False, False)
