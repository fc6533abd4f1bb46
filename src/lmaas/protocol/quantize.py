"""Quantizing a store version (``POST /admin/models/{name}/versions/{ref}/quantize``): the
request body; the answer is the job (:class:`lmaas.protocol.jobs.JobObject`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictStr


class QuantizeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # llama.cpp's types (Q4_0, Q4_1, Q8_0, Q4_K_M, F16); checked by the handler's input rules,
    # so that an unknown one is answered with the list of those allowed.
    types: Annotated[list[Annotated[StrictStr, Field(max_length=16)]], Field(max_length=16)]
    # A file of purpose fine-tune whose text is the held-out text (else a built-in one).
    eval_file: Annotated[StrictStr, Field(max_length=128)] | None = None
