"""Structured output for the transformers backend: ``response_format`` (``json_object`` /
``json_schema``) as a finite automaton over the vocabulary.

outlines-core turns the schema into a regular expression and compiles that into an automaton;
at each step the sampler (``sampler.py``) keeps only the tokens the automaton accepts next.
Raw GBNF grammars are llama.cpp's and are refused by this backend.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from outlines_core import Guide, Index, Vocabulary
from outlines_core.json_schema import build_regex_from_schema

from lmaas.errors import InvalidRequestError
from lmaas.protocol.engine import ToolCallSpec

# ``response_format: json_object``: any JSON object (outlines-core's regex for it nests a few
# levels deep). Compiling it over a 49k vocabulary takes ~11 s, so workers start on it at load.
JSON_OBJECT_SCHEMA = '{"type": "object"}'
GUIDE_CACHE = 32


class Guides:
    """Structured-output automata, one per regular expression, compiled on a thread of their
    own (never the IPC reader's, which must keep answering health pings) and kept LRU."""

    def __init__(
        self, pieces: Callable[[], dict[bytes, list[int]]], eos_id: int, wait_s: float = 5.0
    ) -> None:
        self._pieces = pieces
        self._eos_id = eos_id
        self.wait_s = wait_s
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="guides")
        self._vocabulary: Vocabulary | None = None
        self._cache: OrderedDict[str, Future[Index]] = OrderedDict()
        self._lock = threading.Lock()

    def prefetch(self, regex: str) -> Future[Index]:
        with self._lock:
            future = self._cache.get(regex)
            if future is None:
                future = self._pool.submit(self._compile, regex)
                self._cache[regex] = future
                while len(self._cache) > GUIDE_CACHE:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(regex)
            return future

    def _compile(self, regex: str) -> Index:
        if self._vocabulary is None:
            self._vocabulary = Vocabulary(self._eos_id, self._pieces())
        return Index(regex, self._vocabulary)

    def guide(self, regex: str) -> Guide:
        future = self.prefetch(regex)
        try:
            index = future.result(timeout=self.wait_s)
        except FutureTimeout:
            raise InvalidRequestError(
                "this response_format is still being compiled for this model (a large schema "
                "takes a while the first time); retry in a few seconds",
                param="response_format",
            ) from None
        except Exception as exc:  # outlines-core raises on regexes it cannot turn into an FSM
            with self._lock:
                self._cache.pop(regex, None)
            raise InvalidRequestError(
                f"the JSON schema cannot be compiled: {exc}",
                param="response_format.json_schema.schema",
            ) from exc
        return Guide(index)


def schema_regex(schema: dict[str, Any]) -> str:
    text = JSON_OBJECT_SCHEMA if schema == {} else json.dumps(schema)
    try:
        return str(build_regex_from_schema(text))
    except Exception as exc:  # unsupported keywords and malformed schemas
        raise InvalidRequestError(
            f"the JSON schema cannot be turned into a constraint: {exc}",
            param="response_format.json_schema.schema",
        ) from exc


# Characters a regular expression gives a meaning to (outlines-core reads Rust's syntax, where
# escaping a letter or ``<`` means something else: only these are escaped).
_REGEX_META = set("\\.+*?()|[]{}^$#&-~")


def regex_literal(text: str) -> str:
    return "".join(f"\\{c}" if c in _REGEX_META else c for c in text)


def tool_call_regex(spec: ToolCallSpec) -> str:
    """The regular expression of tool calls: the same language as the llama.cpp backend's
    grammar (``llamacpp/tool_grammar.py``), with outlines-core's regex of one call's JSON."""
    try:
        call_json = str(build_regex_from_schema(json.dumps(spec.call_schema)))
    except Exception as exc:
        raise InvalidRequestError(
            f"the tools' parameter schemas cannot be turned into a constraint: {exc}",
            param="tools",
        ) from exc
    call = f"{regex_literal(spec.open)}\\n?(?:{call_json})[ \\n]?{regex_literal(spec.close)}"
    calls = f"{call}(?:[ \\t\\n]{{0,2}}{call})*" if spec.parallel else call
    ws = "[ \\t\\n]{0,4}"
    if not spec.allow_text:
        return f"{ws}(?:{calls})"
    first = regex_literal(spec.open[:1] or "<")
    return f"{ws}(?:{calls}|(?:[^{first} \\t\\n][\\s\\S]*)?)"
