"""Bounds *inside* Liquid expressions, so no single expression can cost more than a message may.

python-liquid limits loop iterations, the output stream and the bytes held by ``assign``/``capture``,
but an expression is evaluated whole between two of those checks: ``{{ (1..30000000) | join: ","
| size }}`` writes three bytes yet builds a 259 MB string first. Here:

- a range literal longer than ``max_items`` is refused when it is evaluated (before anything
  iterates or materialises it);
- every filter is wrapped: the render deadline is checked before each call; the filters that
  multiply their input (``join``, ``replace``, ``split``) are refused *before* the call when their
  result would exceed the bounds; every result is checked after the call (a string longer than
  ``max_value_bytes``, a list longer than ``max_items`` or larger than ``max_value_bytes`` when
  written out, an integer wider than ``MAX_INT_BITS`` bits), so the next filter of a chain never
  receives an oversized value;
- the render deadline is also checked between nodes (``BudgetContext``).

Together: one filter call allocates at most a small multiple of ``max_value_bytes`` (append of two
maximal strings, escaping of one) before it is stopped, and a template stops within one filter
call or one node of its deadline. Pure: no I/O; the clock is injected.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from typing import Any, ClassVar, Final

from liquid import Environment, RenderContext
from liquid.ast import Node
from liquid.builtin.expressions.primitive import RangeLiteral
from liquid.exceptions import ResourceLimitError
from liquid.expression import Expression

Clock = Callable[[], float]

MAX_INT_BITS: Final = 128
"""Integers wider than this are refused (``times`` squaring a value in a loop grows without end)."""


class RenderTimeout(ResourceLimitError):
    """The message's time budget ran out."""


class ValueLimitError(ResourceLimitError):
    """A range, filter argument or filter result larger than the bounds."""


# -- the deadline -------------------------------------------------------------------------------

# The slot that stores RenderContext.disabled_tags, shadowed by the property below.
_DISABLED_TAGS_SLOT: Final[Any] = vars(RenderContext)["disabled_tags"]


class BudgetContext(RenderContext):
    """A render context that stops the render once its deadline has passed.

    Every node's ``render`` reads ``context.disabled_tags`` before rendering, so checking the clock
    in that property bounds the time between two nodes, including each iteration of a loop body;
    filters check it too (``check_deadline``). Contexts copied by tags inherit the deadline.
    """

    __slots__ = ("_clock", "_deadline")
    _clock: Clock
    _deadline: float

    def __init__(self, *args: Any, deadline: float | None = None, clock: Clock | None = None, **kwargs: Any) -> None:
        parent = kwargs.get("parent_context")
        if isinstance(parent, BudgetContext):
            deadline = parent._deadline if deadline is None else deadline
            clock = parent._clock if clock is None else clock
        self._deadline = float("inf") if deadline is None else deadline
        self._clock = clock or time.monotonic
        super().__init__(*args, **kwargs)

    def check_deadline(self) -> None:
        if self._clock() > self._deadline:
            raise RenderTimeout("render time budget exhausted", token=None)

    @property
    def disabled_tags(self) -> list[str]:
        self.check_deadline()
        value: list[str] = _DISABLED_TAGS_SLOT.__get__(self, RenderContext)
        return value

    @disabled_tags.setter
    def disabled_tags(self, value: list[str]) -> None:
        _DISABLED_TAGS_SLOT.__set__(self, value)


# -- sizes --------------------------------------------------------------------------------------


def measure(value: object, budget: int) -> int:
    """Roughly how many characters ``value`` takes when written out; stops counting past ``budget``.

    Every element counts at least one, so the walk visits at most ``budget`` elements whatever
    the value holds (a list of ten thousand references to one large string is large).
    """
    total = 0
    stack: list[object] = [value]
    while stack:
        size = _own_size(stack.pop(), budget, stack)
        if size is None:
            return budget + 1
        total += size
        if total > budget:
            return total
    return total


def _own_size(item: object, budget: int, stack: list[object]) -> int | None:
    """What ``item`` takes written out, its elements aside (pushed on ``stack``); None when it
    holds more than ``budget`` elements."""
    if isinstance(item, str):
        return len(item) + 1
    if isinstance(item, bool) or item is None:
        return 5
    if isinstance(item, int):
        return item.bit_length() // 3 + 2  # decimal digits, over-estimated
    if isinstance(item, range):
        return _range_size(item)
    if isinstance(item, Mapping):
        if len(item) > budget:
            return None
        stack.extend(item.keys())
        stack.extend(item.values())
        return 2 + len(item)
    if isinstance(item, Sequence | Set):
        if len(item) > budget:
            return None
        stack.extend(item)
        return 2 + len(item)
    return 32  # floats, dates, Undefined, drops: short when written out


def _range_size(item: range) -> int | None:
    try:
        count = len(item)
    except OverflowError:
        return None
    widest = max(abs(item.start), abs(item.stop))
    return count * (widest.bit_length() // 3 + 2)


def _text(value: object) -> str | None:
    """A filter argument as the string python-liquid would use, when that is cheap to know."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


# -- filters ------------------------------------------------------------------------------------


class _Bounds:
    def __init__(self, max_value_bytes: int, max_items: int) -> None:
        self.max_value_bytes = max_value_bytes
        self.max_items = max_items

    def too_large(self, what: str) -> ValueLimitError:
        return ValueLimitError(f"{what} larger than {self.max_value_bytes} bytes", token=None)

    def too_many(self, what: str) -> ValueLimitError:
        return ValueLimitError(f"{what} with more than {self.max_items} items", token=None)

    def before(self, name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        """Refuse a call whose result would be over the bounds, before it is built."""
        if not args:
            return
        left = args[0]
        if name == "join":
            separator = _text(args[1] if len(args) > 1 else kwargs.get("separator", " ")) or ""
            count = len(left) if isinstance(left, Sequence | Set | Mapping) else 1
            if measure(left, self.max_value_bytes) + len(separator) * count > self.max_value_bytes:
                raise self.too_large("join result")
        elif name == "replace" and isinstance(left, str) and len(args) >= 2:
            old, new = _text(args[1]), _text(args[2] if len(args) > 2 else kwargs.get("sub", ""))
            if old is not None and new is not None and len(new) > len(old):
                hits = left.count(old) if old else len(left) + 1
                if len(left) + hits * (len(new) - len(old)) > self.max_value_bytes:
                    raise self.too_large("replace result")
        elif name == "split" and isinstance(left, str):
            split_on = _text(args[1]) if len(args) > 1 else None
            parts = left.count(split_on) + 1 if split_on else len(left)
            if parts > self.max_items:
                raise self.too_many("split result")

    def after(self, name: str, result: object) -> object:
        if isinstance(result, str):
            if len(result) > self.max_value_bytes:
                raise self.too_large(f"{name} result")
        elif isinstance(result, int) and not isinstance(result, bool):
            if result.bit_length() > MAX_INT_BITS:
                raise ValueLimitError(f"{name} result wider than {MAX_INT_BITS} bits", token=None)
        elif isinstance(result, range | Sequence | Set | Mapping):
            try:
                count = len(result)
            except OverflowError:
                count = self.max_items + 1
            if count > self.max_items:
                raise self.too_many(f"{name} result")
            if measure(result, self.max_value_bytes) > self.max_value_bytes:
                raise self.too_large(f"{name} result")
        return result


def _guarded(name: str, func: Callable[..., Any], bounds: _Bounds) -> Callable[..., Any]:
    """``func`` with the deadline checked before the call and its input/result checked."""
    wants_context = bool(getattr(func, "with_context", False))

    @functools.wraps(func)
    def guarded(*args: Any, context: RenderContext, **kwargs: Any) -> Any:
        if isinstance(context, BudgetContext):
            context.check_deadline()
        bounds.before(name, args, kwargs)
        if wants_context:
            kwargs["context"] = context
        return bounds.after(name, func(*args, **kwargs))

    guarded.with_context = True  # type: ignore[attr-defined]  # python-liquid passes the context
    if hasattr(guarded, "filter_async"):  # copied by wraps; async rendering is never used here
        del guarded.filter_async
    return guarded


# -- ranges -------------------------------------------------------------------------------------


class BoundedRange(RangeLiteral):
    """``(a..b)`` refused when longer than the environment's ``max_items``, before use."""

    __slots__ = ()

    def evaluate(self, context: RenderContext) -> range:
        value = super().evaluate(context)
        limit: int | None = getattr(context.env, "max_items", None)
        try:
            count = len(value)
        except OverflowError:
            count = -1
        if limit is not None and not 0 <= count <= limit:
            raise ValueLimitError(f"range with more than {limit} items", token=self.token)
        return value


def _expressions(expression: Expression) -> Iterable[Expression]:
    yield expression
    for child in expression.children():
        yield from _expressions(child)


def bound_ranges(nodes: Iterable[Node], context: RenderContext) -> None:
    """Every range literal in a parsed template becomes a ``BoundedRange`` (same slots: the
    class is swapped in place, python-liquid has no hook for its expression classes)."""
    stack = list(nodes)
    while stack:
        node = stack.pop()
        for top in node.expressions():
            for expression in _expressions(top):
                if type(expression) is RangeLiteral:
                    expression.__class__ = BoundedRange
        stack.extend(node.children(context, include_partials=False))


# -- the environment ----------------------------------------------------------------------------


class BoundedEnvironment(Environment):
    """A Liquid environment whose filters and ranges are bounded (set the class attributes in a
    subclass: python-liquid reads its own limits from class attributes too)."""

    max_value_bytes: ClassVar[int] = 512 * 1024
    max_items: ClassVar[int] = 10_000

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # After every subclass has registered its filters (``setup_tags_and_filters``).
        super().__init__(*args, **kwargs)
        bounds = _Bounds(self.max_value_bytes, self.max_items)
        self.filters = {name: _guarded(name, func, bounds) for name, func in self.filters.items()}

    def _parse(self, source: str) -> list[Node]:
        nodes = super()._parse(source)
        bound_ranges(nodes, RenderContext(self.template_class(env=self, name="", path=None, nodes=[])))
        return nodes
