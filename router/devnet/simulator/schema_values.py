"""Values that satisfy a JSON schema: what a simulated model puts in tool arguments and structured output.

    values = SchemaValues(schema, random.Random(seed), words)
    arguments = values.value()            # valid against ``schema``, the same for the same seed

A small generator of our own for the JSON Schema that OpenAI tools and structured outputs use, which is
what pydantic, LangChain and the agent SDKs emit: ``type`` (one or a list), ``properties``/``required``/
``additionalProperties``, ``items``/``prefixItems``/``minItems``/``maxItems``/``uniqueItems``, ``enum``,
``const``, ``anyOf``/``oneOf``/``allOf``, local ``$ref`` into ``$defs`` or ``definitions`` (recursive
models included), number ranges (``minimum``, ``maximum``, their exclusive forms, ``multipleOf``), string
lengths and the common ``format`` values. A ``pattern`` is met only by a ``default`` or ``examples`` value
that matches it (generating strings from a regular expression needs a regex engine of its own).

The maintained libraries were weighed and left out: jsf draws from the process-wide ``random`` state and
would bring faker, typer and smart_open into the router's runtime dependencies; hypothesis-jsonschema
builds Hypothesis strategies for tests, whose single draws are neither reproducible nor cheap.
"""

from __future__ import annotations

import math
import random
import re
import uuid
from collections.abc import Sequence
from typing import Any

# Past this depth an object gets only its required properties, an array its fewest items and a union its
# null branch when it has one, so recursive models end; past the hard limit a value is null.
MAX_DEPTH = 4
_HARD_DEPTH = MAX_DEPTH + 8
_DEFAULT_SPAN = 100
_UNIQUE_TRIES = 8
_KEYWORDS_OF = {
    "object": ("properties", "required", "additionalProperties", "patternProperties"),
    "array": ("items", "prefixItems", "minItems", "maxItems"),
    "number": ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"),
    "string": ("minLength", "maxLength", "pattern", "format"),
}
# The key of the one entry an object without declared properties gets (a free-form JSON answer).
FREE_FORM_KEY = "answer"


class SchemaValues:
    """Draws values valid against ``root`` (a JSON schema) from ``rng``; strings are made of ``words``."""

    def __init__(self, root: Any, rng: random.Random, words: Sequence[str]) -> None:
        self._root = root
        self._rng = rng
        self._words = words

    def value(self, schema: Any = None, depth: int = 0) -> Any:
        """A value valid against ``schema`` (the root schema when None)."""
        schema = self._root if schema is None and depth == 0 else schema
        if schema is True or schema is None:
            schema = {}
        if not isinstance(schema, dict) or depth > _HARD_DEPTH:
            return None  # a `false` schema admits nothing: null is as good as anything
        schema = self._resolved(schema)
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return self._rng.choice(schema["enum"])
        for union in ("anyOf", "oneOf"):
            options = schema.get(union)
            if isinstance(options, list) and options:
                rest = {k: v for k, v in schema.items() if k != union}
                return self.value({**rest, **self._resolved(self._branch(options, depth))}, depth)
        if isinstance(schema.get("allOf"), list):
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                if isinstance(part, dict):
                    merged = _merged(merged, self._resolved(part))
            return self.value(merged, depth)
        kind = self._kind(schema)
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, depth)
        if kind in ("number", "integer"):
            return self._number(schema, integer=kind == "integer")
        if kind == "boolean":
            return self._rng.random() < 0.5
        if kind == "null":
            return None
        return self._string(schema)

    # -- one kind each -----------------------------------------------------------------------------

    def _object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        declared = schema.get("properties")
        properties: dict[str, Any] = declared if isinstance(declared, dict) else {}
        required = [name for name in schema.get("required") or () if isinstance(name, str)]
        # A model fills what a tool offers, optional fields too, until the nesting gets deep.
        names = list(properties) if depth < MAX_DEPTH else [n for n in properties if n in required]
        names += [name for name in required if name not in names]
        limit = schema.get("maxProperties")
        if isinstance(limit, int) and len(names) > limit:
            names = [n for n in names if n in required] + [n for n in names if n not in required]
            names = names[: max(limit, len(required))]
        out = {name: self.value(properties.get(name, {}), depth + 1) for name in names}
        extra = schema.get("additionalProperties", True)
        if declared is None and extra is not False and "patternProperties" not in schema:
            if isinstance(extra, dict) and extra:
                for _ in range(self._rng.randint(1, 2)):
                    out[self._rng.choice(self._words)] = self.value(extra, depth + 1)
            else:
                out[FREE_FORM_KEY] = self._string({})
        return out

    def _array(self, schema: dict[str, Any], depth: int) -> list[Any]:
        prefix = schema.get("prefixItems")
        items = schema.get("items", {})
        if isinstance(items, list):  # draft 4-7 tuples
            prefix, items = items, schema.get("additionalItems", {})
        prefix = prefix if isinstance(prefix, list) else []
        low = max(_int(schema.get("minItems"), 0), 0)
        high = _int(schema.get("maxItems"), max(low, len(prefix)) + 2)
        if items is False:
            high = min(high, len(prefix))
        start = low if depth >= MAX_DEPTH else max(low, min(1, high))
        count = self._rng.randint(start, max(start, high)) if depth < MAX_DEPTH else start
        values: list[Any] = []
        for index in range(count):
            item = prefix[index] if index < len(prefix) else items
            value = self.value(item, depth + 1)
            if schema.get("uniqueItems"):
                for _ in range(_UNIQUE_TRIES):
                    if value not in values:
                        break
                    value = self.value(item, depth + 1)
                if value in values and len(values) >= low:
                    break
            values.append(value)
        return values

    def _number(self, schema: dict[str, Any], *, integer: bool) -> int | float:
        low, high = (
            _bound(schema, "minimum", "exclusiveMinimum"),
            _bound(schema, "maximum", "exclusiveMaximum"),
        )
        if low is None:
            low = ((high[0] if high else _DEFAULT_SPAN) - _DEFAULT_SPAN, False)
        if high is None:
            high = (low[0] + _DEFAULT_SPAN, False)
        return _between(self._rng, low, high, schema.get("multipleOf"), integer=integer)

    def _string(self, schema: dict[str, Any]) -> str:
        shaped = _FORMATS.get(str(schema.get("format")))
        count = self._rng.randint(1, 4)
        text = shaped(self._rng, self._words) if shaped else " ".join(self._rng.choices(self._words, k=count))
        shortest, longest = _int(schema.get("minLength"), 0), schema.get("maxLength")
        while len(text) < shortest:
            text += " " + self._rng.choice(self._words)
        if isinstance(longest, int):
            text = text[: max(longest, 0)]
            text = text.rstrip() if len(text.rstrip()) >= shortest else text
        pattern = schema.get("pattern")
        if isinstance(pattern, str):
            offered = [schema.get("default"), *(schema.get("examples") or ())]
            return next((s for s in offered if isinstance(s, str) and _matches(pattern, s)), text)
        return text

    # -- schema plumbing ---------------------------------------------------------------------------

    def _resolved(self, schema: dict[str, Any]) -> dict[str, Any]:
        """``schema`` with its local ``$ref`` followed (its own keywords kept beside the target's)."""
        for _ in range(_HARD_DEPTH):
            ref = schema.get("$ref")
            if not isinstance(ref, str):
                return schema
            target = self._pointer(ref)
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**target, **rest} if isinstance(target, dict) else rest
        return schema

    def _pointer(self, ref: str) -> Any:
        if not ref.startswith("#"):
            return {}  # remote references are not fetched
        node = self._root
        for part in filter(None, ref[1:].split("/")):
            key = part.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and key in node:
                node = node[key]
            elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            else:
                return {}
        return node

    def _branch(self, options: list[Any], depth: int) -> dict[str, Any]:
        resolved = [self._resolved(o) if isinstance(o, dict) else {} for o in options]
        null = [o for o in resolved if o.get("type") == "null"]
        if depth >= MAX_DEPTH and null:
            return null[0]
        return self._rng.choice([o for o in resolved if o.get("type") != "null"] or resolved)

    def _kind(self, schema: dict[str, Any]) -> str:
        kind = schema.get("type")
        if isinstance(kind, list):
            kinds = [k for k in kind if isinstance(k, str)]
            kind = self._rng.choice([k for k in kinds if k != "null"] or kinds or ["string"])
        if isinstance(kind, str):
            return kind
        return next((k for k, keys in _KEYWORDS_OF.items() if any(key in schema for key in keys)), "string")


def _merged(left: dict[str, Any], right: dict[str, Any]) -> dict[str, Any]:
    """``allOf`` parts as one schema: properties and required lists joined, other keywords overlaid."""
    merged = {**left, **right}
    if isinstance(left.get("properties"), dict) and isinstance(right.get("properties"), dict):
        merged["properties"] = {**left["properties"], **right["properties"]}
    if isinstance(left.get("required"), list) and isinstance(right.get("required"), list):
        merged["required"] = [*left["required"], *right["required"]]
    return merged


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _bound(schema: dict[str, Any], inclusive: str, exclusive: str) -> tuple[float, bool] | None:
    """A range end as (value, exclusive?), from either spelling (draft 4's boolean exclusive too)."""
    strict = schema.get(exclusive)
    if isinstance(strict, int | float) and not isinstance(strict, bool):
        return float(strict), True
    value = schema.get(inclusive)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value), strict is True
    return None


def _between(
    rng: random.Random, low: tuple[float, bool], high: tuple[float, bool], step: Any, *, integer: bool
) -> int | float:
    """A number in the range from ``low`` to ``high`` (each (value, exclusive?)), a multiple of ``step``
    if one is given."""
    (lo, lo_open), (hi, hi_open) = low, high
    if isinstance(step, int | float) and not isinstance(step, bool) and step > 0:
        first, last = math.ceil(lo / step), math.floor(hi / step)
        first += 1 if lo_open and first * step <= lo else 0
        last -= 1 if hi_open and last * step >= hi else 0
        multiple = rng.randint(first, max(first, last)) * step
        return int(multiple) if integer else multiple
    if integer:
        first = math.floor(lo) + 1 if lo_open else math.ceil(lo)
        last = math.ceil(hi) - 1 if hi_open else math.floor(hi)
        return rng.randint(first, max(first, last))
    value = round(rng.uniform(lo, hi), 2)
    if value < lo or value > hi or (lo_open and value == lo) or (hi_open and value == hi):
        value = (lo + hi) / 2
    return value


def _matches(pattern: str, text: str) -> bool:
    try:
        return re.search(pattern, text) is not None
    except re.error:
        return False


def _date(rng: random.Random) -> str:
    return f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def _time(rng: random.Random) -> str:
    return f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z"


_FORMATS: dict[str, Any] = {
    "date-time": lambda rng, words: f"{_date(rng)}T{_time(rng)}",
    "date": lambda rng, words: _date(rng),
    "time": lambda rng, words: _time(rng),
    "duration": lambda rng, words: f"PT{rng.randint(1, 59)}M",
    "email": lambda rng, words: f"{rng.choice(words)}@example.com",
    "hostname": lambda rng, words: f"{rng.choice(words)}.example.com",
    "uri": lambda rng, words: f"https://example.com/{rng.choice(words)}",
    "url": lambda rng, words: f"https://example.com/{rng.choice(words)}",
    "uuid": lambda rng, words: str(uuid.UUID(int=rng.getrandbits(128), version=4)),
    "ipv4": lambda rng, words: f"192.0.2.{rng.randint(1, 254)}",
    "ipv6": lambda rng, words: f"2001:db8::{rng.randint(1, 65535):x}",
}
