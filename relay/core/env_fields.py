"""Settings read from the environment, each declared once: its field names its variable.

A field made by :func:`env_field` carries its variable's name beside its default, and :func:`read_env`
reads every such field of a dataclass, so the name, the default and the way the text is read stand in
one place instead of a field and a separate ``env.get`` that must agree with it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

_ENV = "relay.env"


def env_field(variable: str, default: T, parse: Callable[[str], T] | None = None) -> T:
    """A dataclass field defaulting to ``default``, read from ``variable`` when it is set: by ``parse``,
    else as the default's type (``int("8")``)."""
    read = parse or type(default)
    return dataclasses.field(default=default, metadata={_ENV: (variable, read)})


def read_env(cls: type[Any], env: Mapping[str, str]) -> dict[str, Any]:
    """The values of ``cls``'s env fields whose variables ``env`` sets, by field name."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if _ENV in f.metadata:
            variable, parse = f.metadata[_ENV]
            if variable in env:
                values[f.name] = parse(env[variable])
    return values
