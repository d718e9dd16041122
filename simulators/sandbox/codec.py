"""Values: encoded inside the job, rebuilt in the evaluator.

Everything a job sends is untrusted: ``decode_value`` rebuilds a value within the bounds
``encode_value`` enforces, so a value built to be slow to rebuild or compare is refused.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

# typing.TYPE_CHECKING without importing typing into the server (each page it holds is paid for
# at every fork); annotations are strings here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

ENCODE_BUDGET = 100_000  # per returned value: one unit per element, one per 32 chars of text
MAX_ENCODE_DEPTH = 100
MAX_INT_BITS = 1 << 20  # larger ints are refused (in and out of the job): arithmetic on them is slow
MAX_EQUAL_HASHES = 8  # per set or dict the evaluator rebuilds (see _check_hashes)
REPR_CHARS = 300


class _Unencodable(Exception):
    pass


def encode_value(value: Any) -> Any:
    """Plain JSON data for ``value`` (raises ``ValueError`` when it is too big or too deep).

    Exact builtin types map to themselves or a one-key tag (tuple, set, dict as key/value
    pairs, bytes, big ints, complex); Decimal, Fraction and datetime types travel by value;
    subclasses of builtins go through their base (built with the *base's* methods, so an
    override cannot lie), numpy values through ``tolist``; anything else becomes
    ``(qualified type name, repr)``.
    """
    try:
        return _encode(value, [ENCODE_BUDGET], 0)
    except _Unencodable as exc:
        raise ValueError(str(exc)) from None


def _encode(value: Any, budget: list[int], depth: int) -> Any:
    if depth > MAX_ENCODE_DEPTH:
        raise _Unencodable("value is nested too deeply to compare")
    kind = type(value)
    budget[0] -= 1 + (len(value) // 32 if kind in (str, bytes, bytearray) else 0)
    if budget[0] < 0:
        raise _Unencodable("value is too large to compare")
    if value is None or kind in (bool, str, float):
        return value
    if kind is int:  # beyond ~4300 digits int->str is refused: ship those as hex
        bits = value.bit_length()
        if bits < 10_000:
            return value
        budget[0] -= bits // 128  # as decode_value counts its hex text
        if bits > MAX_INT_BITS or budget[0] < 0:
            raise _Unencodable("value is too large to compare")
        return {"int": format(value, "x")}
    deeper = depth + 1
    if kind is list:
        return [_encode(item, budget, deeper) for item in value]
    if kind is tuple:
        return {"tuple": [_encode(item, budget, deeper) for item in value]}
    if kind is dict:
        return {"dict": [[_encode(k, budget, deeper), _encode(v, budget, deeper)] for k, v in value.items()]}
    if kind is set or kind is frozenset:
        return {kind.__name__: [_encode(item, budget, deeper) for item in value]}
    if kind is bytes or kind is bytearray:  # bytearray == bytes under ==
        return {"bytes": bytes(value).hex()}
    if kind is complex:
        return {"complex": [value.real, value.imag]}
    if kind is Decimal:
        text = str(value)
        budget[0] -= len(text) // 32
        if budget[0] < 0:
            raise _Unencodable("value is too large to compare")
        return {"decimal": text}
    if kind is Fraction:
        return {
            "fraction": [_encode(value.numerator, budget, deeper), _encode(value.denominator, budget, deeper)]
        }
    if kind in (datetime.datetime, datetime.date, datetime.time):
        return {kind.__name__: value.isoformat()}
    if kind is datetime.timedelta:
        return {"timedelta": [value.days, value.seconds, value.microseconds]}
    for base in (int, float, str, list, tuple, dict, set, frozenset):
        if isinstance(value, base):  # e.g. IntEnum, OrderedDict, Counter, namedtuple
            return _encode(_as_base(base, value), budget, depth)
    if getattr(kind, "__module__", "").partition(".")[0] == "numpy" and hasattr(value, "tolist"):
        return _encode(value.tolist(), budget, deeper)
    name, text = f"{kind.__module__}.{kind.__qualname__}", short_repr(value)
    budget[0] -= (len(name) + len(text)) // 32  # as decode_value counts them
    if budget[0] < 0:
        raise _Unencodable("value is too large to compare")
    return {"object": [name, text]}


def _as_base(base: type, value: Any) -> Any:
    """A copy of ``value`` as exactly ``base``, made with the base's own methods."""
    if base is int:
        return int.__int__(value)
    if base is float:
        return float.__float__(value)
    if base is str:
        return str.__str__(value)
    if base is dict:
        return dict(dict.items(value))
    return base(base.__iter__(value))


class _NaN:
    """Stands in for float NaN once decoded: equal to itself (identity), to nothing else."""

    def __repr__(self) -> str:
        return "nan"


NAN = _NaN()


@dataclass(frozen=True)
class Opaque:
    """A value of a type that is not rebuilt: equal when type name and repr are."""

    type_name: str
    repr: str


class ValueTooLarge(ValueError):
    """A job's value exceeds what the evaluator rebuilds (size, depth, int size, hash collisions)."""


def decode_value(data: Any) -> Any:
    """Rebuild plain Python values from ``encode_value`` data; NaN becomes ``NAN``.

    Only builtin and stdlib value types are constructed, so comparing the result with ``==``
    runs no code from the job. The data is the job's, so it may be built to make rebuilding or
    comparing it slow; what ``encode_value`` would refuse (``ENCODE_BUDGET``, ``MAX_ENCODE_DEPTH``,
    ``MAX_INT_BITS``) and sets or dicts with more than ``MAX_EQUAL_HASHES`` keys of one hash
    (quadratic to build) raise :class:`ValueTooLarge`, so decoding and comparing stay linear.
    Raises ``ValueError``/``TypeError``/``ArithmeticError`` on data no honest job would send.
    """
    return _decode(data, [ENCODE_BUDGET], 0)


def _decode(data: Any, budget: list[int], depth: int) -> Any:
    if depth > MAX_ENCODE_DEPTH:
        raise ValueTooLarge("value is nested too deeply to compare")
    kind = type(data)
    budget[0] -= 1 + (len(data) // 32 if kind is str else 0)
    if budget[0] < 0:
        raise ValueTooLarge("value is too large to compare")
    if data is None or kind in (bool, int, str):
        return data
    if kind is float:
        return NAN if math.isnan(data) else data
    deeper = depth + 1
    if kind is list:
        return [_decode(item, budget, deeper) for item in data]
    if kind is not dict or len(data) != 1:
        raise ValueError("malformed value")
    ((tag, body),) = data.items()
    if tag in ("tuple", "set", "frozenset", "dict"):
        if type(body) is not list:
            raise ValueError("malformed value")
        if tag == "dict":
            pairs = [_pair(item) for item in body]
            keys = [_decode(k, budget, deeper) for k, _ in pairs]
            _check_hashes(keys)
            return dict(zip(keys, [_decode(v, budget, deeper) for _, v in pairs]))
        items = [_decode(item, budget, deeper) for item in body]
        if tag == "tuple":
            return tuple(items)
        _check_hashes(items)
        return set(items) if tag == "set" else frozenset(items)
    if tag in ("int", "bytes", "decimal") and type(body) is str:  # charged as encode_value does
        budget[0] -= len(body) // (64 if tag == "bytes" else 32)
        if budget[0] < 0:
            raise ValueTooLarge("value is too large to compare")
    if tag == "int":
        if len(body) > MAX_INT_BITS // 4 + 1:  # (+1: the sign)
            raise ValueTooLarge(f"an int of more than {MAX_INT_BITS} bits is too large to compare")
        return int(body, 16)
    if tag == "bytes":
        return bytes.fromhex(body)
    if tag == "complex":
        return complex(_number(body[0]), _number(body[1]))
    if tag == "decimal":
        return Decimal(body)
    if tag == "fraction":
        numerator, denominator = (_decode(part, budget, deeper) for part in body)
        if type(numerator) is not int or type(denominator) is not int or denominator <= 0:
            raise ValueError("malformed fraction")
        # Not Fraction(n, d): its gcd is quadratic in the ints' size. An honest job sends them in
        # lowest terms (a Fraction's own); others only fail their own comparisons.
        fraction = object.__new__(Fraction)
        fraction._numerator, fraction._denominator = numerator, denominator
        return fraction
    if tag in ("datetime", "date", "time"):
        return getattr(datetime, tag).fromisoformat(body)
    if tag == "timedelta":
        return datetime.timedelta(days=body[0], seconds=body[1], microseconds=body[2])
    if tag == "object":
        type_name, text = body
        if type(type_name) is not str or type(text) is not str:
            raise ValueError("malformed object")
        budget[0] -= (len(type_name) + len(text)) // 32
        if budget[0] < 0:
            raise ValueTooLarge("value is too large to compare")
        return Opaque(type_name, text)
    raise ValueError(f"unknown value tag {tag!r}")


def _pair(item: Any) -> tuple[Any, Any]:
    if type(item) is not list or len(item) != 2:
        raise ValueError("malformed dict item")
    return item[0], item[1]


def _number(data: Any) -> float:
    if type(data) not in (int, float):
        raise ValueError("malformed number")
    return float(data)


def _check_hashes(keys: list[Any]) -> None:
    """Refuse keys many of which share one hash: a set or dict of them takes quadratic time to
    build and to compare (each insertion probes every earlier key of that hash)."""
    counts: dict[int, int] = {}
    for key in keys:  # hashes are ints below 2**61: as keys here they do not collide themselves
        code = hash(key)
        counts[code] = counts.get(code, 0) + 1
        if counts[code] > MAX_EQUAL_HASHES:
            raise ValueTooLarge(f"more than {MAX_EQUAL_HASHES} keys of a set or dict share one hash")


def short_repr(value: Any) -> str:
    """A display string, at most ``REPR_CHARS`` long. Used on values that passed the encoding
    budget, or on opaque objects inside the job under the call's time budget."""
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__} without a usable repr>"
    return text if len(text) <= REPR_CHARS else text[: REPR_CHARS - 3] + "..."
