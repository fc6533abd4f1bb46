"""The name rules, one per meaning; every validator and pydantic field uses these.

- A **store model name** names a model in the store (``lmaas models push NAME``): lower case,
  because it becomes part of ``name:alias`` references and of folder names.
- An **alias** names a version of a store model (``prod``, ``latest``); it starts with a letter
  so that ``name:3`` (a version number) and ``name:prod`` (an alias) never collide.
- A **served name** is what clients put in the ``model`` field: a deployment's name, a config
  model's name, or a reference such as ``name:alias``. API keys may be limited to served names.
"""

from __future__ import annotations

import re
from typing import Final

STORE_MODEL_NAME_PATTERN: Final = r"^[a-z0-9][a-z0-9._-]{0,127}$"
ALIAS_PATTERN: Final = r"^[a-z][a-z0-9._-]{0,63}$"
SERVED_NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"

STORE_MODEL_NAME_RE: Final = re.compile(STORE_MODEL_NAME_PATTERN)
ALIAS_RE: Final = re.compile(ALIAS_PATTERN)
SERVED_NAME_RE: Final = re.compile(SERVED_NAME_PATTERN)


def is_store_model_name(name: object) -> bool:
    return isinstance(name, str) and STORE_MODEL_NAME_RE.fullmatch(name) is not None


def is_alias(name: object) -> bool:
    return isinstance(name, str) and ALIAS_RE.fullmatch(name) is not None


def is_served_name(name: object) -> bool:
    return isinstance(name, str) and SERVED_NAME_RE.fullmatch(name) is not None
