"""Tool calling in OpenAI's chat API: the request's tools and choice, the calls in messages, and
the calls in responses and stream deltas.

What the server does with them is in ``gateway/serving/tools.py`` (checks, prompts, the output
constraint) and ``gateway/serving/tool_parse.py`` (generated text back into calls).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import MISSING, AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictStr
from pydantic_core import PydanticCustomError

# OpenAI's rule for a function's name, and its bound on the number of tools.
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_TOOLS = 128


def valid_function_name(value: str) -> str:
    if _NAME.fullmatch(value) is None:
        shown = value if len(value) <= 70 else f"{value[:64]}... ({len(value)} characters)"
        raise PydanticCustomError(
            "function_name",
            "a function name is 1 to 64 letters, digits, underscores or dashes; got '{name}'",
            {"name": shown},
        )
    return value


FunctionName = Annotated[StrictStr, AfterValidator(valid_function_name)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class FunctionDefinition(_Request):
    name: FunctionName
    description: StrictStr | None = None
    # A JSON schema of the arguments (an object); none: a function without arguments.
    parameters: dict[str, Any] | None = None
    # Arguments always follow the schema here (a grammar), strict or not.
    strict: StrictBool | None = None


class Tool(_Request):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Request):
    name: StrictStr


class NamedToolChoice(_Request):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice
# The legacy ``function_call`` field of a request.
FunctionCallChoice = Literal["none", "auto"] | NamedFunction


class FunctionCallInput(_Request):
    """A call an earlier assistant turn made: ``arguments`` is JSON text, as OpenAI sends it."""

    name: StrictStr
    arguments: StrictStr = "{}"


class ToolCallInput(_Request):
    id: StrictStr
    type: Literal["function"] = "function"
    function: FunctionCallInput


ToolList = Annotated[list[Tool], Field(max_length=MAX_TOOLS)]
FunctionList = Annotated[list[FunctionDefinition], Field(max_length=MAX_TOOLS)]


# --- responses -------------------------------------------------------------------------


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FunctionCall(_Response):
    name: str
    arguments: str  # JSON text


class ToolCall(_Response):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionCallDelta(_Response):
    name: str | MISSING = MISSING
    arguments: str | MISSING = MISSING


class ToolCallDelta(_Response):
    """A piece of a streamed call: the first of a call has its id, type and name."""

    index: int
    id: str | MISSING = MISSING
    type: Literal["function"] | MISSING = MISSING
    function: FunctionCallDelta
