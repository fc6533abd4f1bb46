"""Request models of the compatibility routes: the original microservices' ``POST /generate``
(``{"text"}`` -> ``{"result"}``) and ``POST /embed`` (``{"sentence"}`` -> ``{"result": [{"token",
"embedding"}]}``), with exactly those shapes; ``model`` is optional (the first served model that
can do it) and unknown fields are refused."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from lmaas.protocol.openai import Float, Text


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GenerateTextRequest(_Request):
    """The text continued by a generation model (a completion of ``text``, not a chat)."""

    text: Text
    model: Text | None = None
    # lmaas: the continuation's length and randomness (greedy by default, as the original).
    max_tokens: Annotated[StrictInt, Field(ge=1)] = 64
    temperature: Annotated[Float, Field(ge=0.0, le=2.0)] = 0.0


class EmbedSentenceRequest(_Request):
    """Each token of ``sentence`` with its contextual vector from an encoder."""

    sentence: Text
    model: Text | None = None
