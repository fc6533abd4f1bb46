"""The GBNF grammar of tool calls (``ToolCallSpec``): llama.cpp's own JSON-schema conversion for
one call, wrapped in the call markers, once or repeated, or free text instead.

    root       ::= ws lmaas-calls            (tool_choice required or a named function)
    root       ::= ws (lmaas-calls | lmaas-text)        (tool_choice auto)
    lmaas-call ::= "<tool_call>" "\\n"? call-json "\\n"? "</tool_call>"
    lmaas-text ::= ([^< \\t\\n] any*)?      text that cannot start a call

``call-json`` and its sub-rules come from ``llama_cpp.llama_grammar.SchemaConverter``, the
converter ``response_format`` uses, named so that they do not meet the rules here.
"""

from __future__ import annotations

import functools

from lmaas.errors import InvalidRequestError
from lmaas.protocol.engine import ToolCallSpec

_CALL_RULE = "call-json"
_ANY = "[\\U00000000-\\U0010FFFF]"


def gbnf_literal(text: str) -> str:
    """``text`` as a GBNF string literal."""
    escaped = (
        text.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'


def _char_class_escape(char: str) -> str:
    return f"\\{char}" if char in "\\]^-" else char


@functools.lru_cache(maxsize=32)
def tool_call_grammar(spec_json: str) -> str:
    """The grammar of a ``ToolCallSpec`` (given as its JSON: the ``n`` choices of a request
    share one conversion)."""
    from llama_cpp.llama_grammar import SchemaConverter

    spec = ToolCallSpec.model_validate_json(spec_json)
    converter = SchemaConverter(  # type: ignore[no-untyped-call]
        prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False
    )
    try:
        schema = converter.resolve_refs(spec.call_schema, "stdin")
        converter.visit(schema, _CALL_RULE)  # type: ignore[no-untyped-call]
        rules = converter.format_grammar()  # type: ignore[no-untyped-call]
    except Exception as exc:  # the converter raises many kinds on schemas it cannot express
        raise InvalidRequestError(
            f"the tools' parameter schemas cannot be turned into a grammar: "
            f"{type(exc).__name__}: {str(exc)[:200]}",
            param="tools",
        ) from exc
    call = f'{gbnf_literal(spec.open)} "\\n"? {_CALL_RULE} "\\n"? {gbnf_literal(spec.close)}'
    calls = "lmaas-call ([ \\t\\n]{0,2} lmaas-call)*" if spec.parallel else "lmaas-call"
    lines = [
        "lmaas-ws ::= [ \\t\\n]{0,4}",
        f"lmaas-call ::= {call}",
        f"lmaas-calls ::= {calls}",
    ]
    if spec.allow_text:
        first = _char_class_escape(spec.open[:1] or "<")
        lines.append(f"lmaas-text ::= ([^{first} \\t\\n] {_ANY}*)?")
        lines.append("root ::= lmaas-ws (lmaas-calls | lmaas-text)")
    else:
        lines.append("root ::= lmaas-ws lmaas-calls")
    return "\n".join([rules, *lines])
