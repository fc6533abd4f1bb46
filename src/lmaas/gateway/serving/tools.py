"""Tool calling for chat: the request's tools checked, the prompt that shows them, and the
constraint that makes the output a call.

* **Checks** (``resolve_tools``): ``tools`` or the legacy ``functions`` (not both), unique
  names, each function's ``parameters`` a JSON schema of an object within the limits
  ``response_format`` schemas have (``schema_limits``), and ``tool_choice`` (``none``,
  ``auto``, ``required``, or a named function that must be among the tools) or
  ``function_call``. The result is a ``ToolPlan``.
* **Prompt** (``template_messages``, ``template_tools``): a chat template that handles tools
  (its source uses a ``tools`` variable, as Hugging Face's tool-calling templates do) gets
  ``tools`` and the messages' ``tool_calls`` and ``tool`` turns as it expects them (arguments
  as objects). Any other template gets the generic format: a system-prompt text listing the
  tools as JSON and asking for ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``,
  earlier calls written that way in the assistant's turns, and tool results as user turns
  ``<tool_response>...</tool_response>``.
* **Constraint** (``tool_spec``): the JSON schema of one call (one ``anyOf`` member per
  function: the name as a constant, the arguments as the function's schema), which the worker
  wraps in the call markers and turns into a grammar or automaton (``ToolCallSpec``):
  ``required`` or a named function must call, ``auto`` may answer in text instead, and
  ``parallel_tool_calls`` allows more than one call (never with a named function: that one is
  called exactly once).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from jsonschema import SchemaError
from jsonschema.validators import validator_for

from lmaas.config import Limits
from lmaas.errors import InvalidRequestError
from lmaas.gateway.serving.schema_limits import check_schema_limits
from lmaas.protocol.engine import ToolCallSpec
from lmaas.protocol.openai import ChatCompletionRequest, ChatMessage
from lmaas.protocol.tools import FunctionDefinition

OPEN = "<tool_call>"
CLOSE = "</tool_call>"
EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
_VALUE_KEYWORDS = frozenset({"enum", "const", "default", "examples"})

Hide = Callable[[str], str]


@dataclass(frozen=True, slots=True)
class ToolPlan:
    """What a request's tool fields come to."""

    shown: tuple[FunctionDefinition, ...]  # the functions the prompt lists
    callable: tuple[FunctionDefinition, ...]  # those the output may call
    choice: Literal["none", "auto", "required"]  # a named function is "required" of one
    named: str | None
    parallel: bool
    legacy: bool  # functions / function_call: the reply is a function_call

    @property
    def active(self) -> bool:
        """Whether the output may be (or must be) calls."""
        return self.choice != "none"


def resolve_tools(body: ChatCompletionRequest, limits: Limits) -> ToolPlan | None:
    """The request's tools checked (400 naming the field), or None without tools."""
    legacy = body.functions is not None
    if legacy and body.tools is not None:
        raise InvalidRequestError(
            "give either tools or the legacy functions, not both", param="functions"
        )
    if legacy and body.tool_choice is not None:
        raise InvalidRequestError(
            "tool_choice goes with tools; with functions, use function_call", param="tool_choice"
        )
    if not legacy and body.function_call is not None:
        raise InvalidRequestError(
            "function_call goes with functions; with tools, use tool_choice",
            param="function_call",
        )
    field = "function_call" if legacy else "tool_choice"
    raw = body.function_call if legacy else body.tool_choice
    functions = list(body.functions or ()) if legacy else [t.function for t in body.tools or ()]
    if not functions:
        if raw is None or raw in ("none", "auto"):
            return None
        given = "functions" if legacy else "tools"
        raise InvalidRequestError(
            f"{field} asks for a call but the request gives no {given}", param=field
        )
    _check_functions(functions, "functions" if legacy else "tools", legacy, limits)
    named = None if raw is None or isinstance(raw, str) else _named(raw)
    if named is not None and named not in {f.name for f in functions}:
        raise InvalidRequestError(
            f"{field} names the function {named!r}, which is not among the "
            f"{'functions' if legacy else 'tools'} given "
            f"({', '.join(f.name for f in functions)})",
            param=field,
        )
    choice: Literal["none", "auto", "required"] = "auto"
    if isinstance(raw, str):
        choice = raw
    elif named is not None:
        choice = "required"
    plan = ToolPlan(
        shown=() if choice == "none" else tuple(functions),
        callable=tuple(f for f in functions if named is None or f.name == named),
        choice=choice,
        named=named,
        # A named function is called exactly once (OpenAI's "forced function").
        parallel=not legacy and named is None and body.parallel_tool_calls is not False,
        legacy=legacy,
    )
    if plan.active:
        # The call schema of many tools together is bounded too (its size, above all).
        check_schema_limits(
            call_schema(plan.callable), limits, param="functions" if legacy else "tools"
        )
    return plan


def refuse_with_tools(body: ChatCompletionRequest) -> None:
    """What cannot go with an output that may be calls (400 naming the field)."""
    if body.use_beam_search:
        raise InvalidRequestError(
            "beam search cannot be combined with tool calls (set tool_choice to none)",
            param="use_beam_search",
        )
    fmt = body.response_format
    if fmt is not None and fmt.type != "text":
        raise InvalidRequestError(
            "a response_format cannot be combined with tool calls: the output is constrained "
            "to calls already (set tool_choice to none, or leave response_format out)",
            param="response_format",
        )


def _named(raw: Any) -> str:
    function = getattr(raw, "function", None)
    return str(function.name if function is not None else raw.name)


def _check_functions(
    functions: list[FunctionDefinition], field: str, legacy: bool, limits: Limits
) -> None:
    seen: set[str] = set()
    for i, fn in enumerate(functions):
        at = f"{field}.{i}" if legacy else f"{field}.{i}.function"  # as pydantic names it
        if fn.name in seen:
            raise InvalidRequestError(
                f"two functions are named {fn.name!r}; names must be unique", param=f"{at}.name"
            )
        seen.add(fn.name)
        if fn.parameters is None:
            continue
        param = f"{at}.parameters"
        schema = fn.parameters
        check_schema_limits(schema, limits, param=param)
        try:
            validator_for(schema).check_schema(schema)
        except SchemaError as exc:
            raise InvalidRequestError(f"invalid JSON schema: {exc.message}", param=param) from exc
        if schema.get("type", "object") != "object":
            raise InvalidRequestError(
                "a function's parameters are a JSON schema of type object", param=param
            )


def parameters_of(fn: FunctionDefinition) -> dict[str, Any]:
    """The schema of a function's arguments (an object without properties if it has none)."""
    if not fn.parameters:
        return EMPTY_PARAMETERS
    if "type" not in fn.parameters and "properties" not in fn.parameters:
        return {**fn.parameters, "type": "object"}
    return fn.parameters


def call_schema(functions: tuple[FunctionDefinition, ...]) -> dict[str, Any]:
    """The JSON schema of one call to any of ``functions``: ``name`` first, then
    ``arguments``. A function's schema with ``$ref``s moves under ``$defs``, its references
    rebased, so that they still point into it."""
    members: list[dict[str, Any]] = []
    defs: dict[str, Any] = {}
    for i, fn in enumerate(functions):
        arguments = parameters_of(fn)
        if _has_ref(arguments):
            key = f"lmaas_tool_{i}"
            defs[key] = _rebased(arguments, f"#/$defs/{key}")
            arguments = {"$ref": f"#/$defs/{key}"}
        members.append(
            {
                "type": "object",
                "properties": {"name": {"const": fn.name}, "arguments": arguments},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    schema = members[0] if len(members) == 1 else {"anyOf": members}
    return {**schema, "$defs": defs} if defs else schema


def _has_ref(node: Any) -> bool:
    if isinstance(node, list):
        return any(_has_ref(item) for item in node)
    if not isinstance(node, dict):
        return False
    if isinstance(node.get("$ref"), str):
        return True
    return any(_has_ref(v) for k, v in node.items() if k not in _VALUE_KEYWORDS)


def _rebased(node: Any, base: str) -> Any:
    """``node`` with each local ``$ref`` (``#...``) moved under ``base``."""
    if isinstance(node, list):
        return [_rebased(item, base) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "$ref" and isinstance(value, str) and value.startswith("#"):
            out[key] = base + value[1:]
        elif key in _VALUE_KEYWORDS:
            out[key] = value
        else:
            out[key] = _rebased(value, base)
    return out


def tool_spec(plan: ToolPlan) -> ToolCallSpec:
    """What the worker constrains the output to."""
    return ToolCallSpec(
        call_schema=call_schema(plan.callable),
        open=OPEN,
        close=CLOSE,
        parallel=plan.parallel,
        allow_text=plan.choice == "auto",
    )


# --- the prompt ------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def template_handles_tools(template: str) -> bool:
    """Whether a chat template reads a ``tools`` variable (Hugging Face's convention)."""
    return re.search(r"\btools\b", template) is not None


def _hidden(value: Any, hide: Hide) -> Any:
    """``value`` (JSON) with every string, keys included, passed through ``hide``."""
    if isinstance(value, str):
        return hide(value)
    if isinstance(value, list):
        return [_hidden(v, hide) for v in value]
    if isinstance(value, dict):
        return {hide(k): _hidden(v, hide) for k, v in value.items()}
    return value


def _function_json(fn: FunctionDefinition) -> dict[str, Any]:
    out: dict[str, Any] = {"name": fn.name}
    if fn.description:
        out["description"] = fn.description
    out["parameters"] = parameters_of(fn)
    return out


def template_tools(plan: ToolPlan | None, hide: Hide) -> list[dict[str, Any]] | None:
    """The ``tools`` variable of a template that handles tools."""
    if plan is None or not plan.shown:
        return None
    return [{"type": "function", "function": _hidden(_function_json(f), hide)} for f in plan.shown]


def tool_instructions(plan: ToolPlan) -> str:
    """The generic format's system-prompt text."""
    lines = ["You can call these functions (tools), described as JSON:"]
    lines += [json.dumps(_function_json(f), ensure_ascii=False) for f in plan.shown]
    each = ", one block per call" if plan.parallel else ""
    lines.append(
        f'To call a function, reply with only {OPEN}{{"name": <function name>, "arguments": '
        f"<the arguments as a JSON object>}}{CLOSE}{each}."
    )
    if plan.named is not None:
        lines.append(f"Call the function {plan.named} now.")
    elif plan.choice == "required":
        lines.append("Call one of the functions now.")
    else:
        lines.append("If no function is needed, answer in plain text.")
    return "\n".join(lines)


def _arguments(text: str) -> Any:
    """A call's arguments as the object they spell, or the text if they are not JSON."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        return text


def _calls(m: ChatMessage) -> list[tuple[str, str, str]]:
    """(id, name, arguments text) of an assistant turn's calls."""
    calls = [(c.id, c.function.name, c.function.arguments) for c in m.tool_calls or ()]
    if m.function_call is not None:
        calls.append(("", m.function_call.name, m.function_call.arguments))
    return calls


def _native_message(m: ChatMessage, role: str, hide: Hide) -> dict[str, Any]:
    out: dict[str, Any] = {"role": role, "content": hide(m.text())}
    calls = _calls(m)
    if calls:
        out["tool_calls"] = [
            {
                "id": hide(call_id),
                "type": "function",
                "function": {"name": hide(name), "arguments": _hidden(_arguments(args), hide)},
            }
            for call_id, name, args in calls
        ]
    if m.role in ("tool", "function"):
        out["role"] = "tool"
        if m.tool_call_id is not None:
            out["tool_call_id"] = hide(m.tool_call_id)
    if m.name is not None:
        out["name"] = hide(m.name)
    return out


def _generic_call(name: str, args: str) -> str:
    call = {"name": name, "arguments": _arguments(args)}
    return f"{OPEN}\n{json.dumps(call, ensure_ascii=False)}\n{CLOSE}"


def template_messages(
    messages: list[ChatMessage], hide: Hide, *, native: bool, plan: ToolPlan | None
) -> list[dict[str, Any]]:
    """The messages as the template reads them (``developer`` is ``system``)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        role = "system" if m.role == "developer" else m.role
        if native:
            out.append(_native_message(m, role, hide))
        elif role in ("tool", "function"):
            result = f"<tool_response>\n{hide(m.text())}\n</tool_response>"
            if out and out[-1].get("tool_results"):
                out[-1]["content"] += "\n" + result
            else:
                out.append({"role": "user", "content": result, "tool_results": True})
        else:
            parts = [hide(m.text())] if m.text() else []
            parts += [hide(_generic_call(name, args)) for _, name, args in _calls(m)]
            out.append({"role": role, "content": "\n".join(parts)})
    for item in out:
        item.pop("tool_results", None)
    if plan is not None and plan.shown and not native:
        text = hide(tool_instructions(plan))
        if out and out[0]["role"] == "system":
            out[0]["content"] = f"{out[0]['content']}\n\n{text}" if out[0]["content"] else text
        else:
            out.insert(0, {"role": "system", "content": text})
    return out
