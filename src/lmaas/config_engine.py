"""The ``engine:`` settings of a model (``EngineConfig``; :mod:`lmaas.config` imports it
from here): how one worker process runs its model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator


class EngineConfig(BaseModel):
    """How one worker process runs its model."""

    model_config = ConfigDict(extra="forbid")

    context_size: Annotated[
        int,
        Field(ge=256, le=1 << 20, description="KV-cache cells shared by all sequences of a worker"),
    ] = 8192
    max_model_len: Annotated[
        int | None,
        Field(
            ge=16,
            description="Longest prompt + completion of one request, in tokens "
            "(default: the smaller of the model's training context and context_size)",
        ),
    ] = None
    max_num_seqs: Annotated[
        int, Field(ge=1, le=256, description="Sequences decoded together in one batch")
    ] = 32
    max_batch_tokens: Annotated[
        int,
        Field(
            ge=16,
            le=8192,
            description="Tokens per engine step (decode tokens + prompt chunks); "
            "a long prompt is prefilled in chunks of at most this size",
        ),
    ] = 512
    threads: Annotated[
        int, Field(ge=0, le=512, description="CPU threads for llama.cpp (0 = all cores)")
    ] = 0
    target_tpot_ms: Annotated[
        float | None,
        Field(
            gt=0,
            le=60_000,
            description="Latency target for one decode step, i.e. the time per output token "
            "every running sequence sees: while decode steps are slower, the worker runs "
            "fewer sequences at once (down to 1) and raises the number again when they are "
            "well under it; unset, up to max_num_seqs run whatever the step time",
        ),
    ] = None
    prefix_cache: Annotated[
        bool,
        Field(
            description="Automatic prefix caching: the KV cells of finished (and preempted) "
            "sequences stay indexed by their tokens, and a request whose prompt starts the same "
            "way copies them instead of prefilling them again (a request opts out with "
            "cache_prompt: false)"
        ),
    ] = True
    prefix_cache_entries: Annotated[
        int,
        Field(
            ge=1,
            le=224,
            description="Cached prefixes kept at most (each is one KV sequence id of llama.cpp, "
            "which allows 256 with the slots)",
        ),
    ] = 32
    prefix_cache_max_tokens: Annotated[
        int | None,
        Field(
            ge=0,
            description="KV cells the prefix cache may hold; unset: a quarter of context_size. "
            "Cells the running sequences need always win (least recently used prefixes go "
            "first), and more cached cells make each decode step attend over more of the cache",
        ),
    ] = None
    backend: Annotated[
        Literal["auto", "llamacpp", "transformers"],
        Field(
            description="Model library: llama.cpp for GGUF files, transformers (PyTorch) for "
            "Hugging Face folders; auto picks by the path (a .gguf file or a directory)"
        ),
    ] = "auto"
    task_batch_window_ms: Annotated[
        float,
        Field(
            ge=0,
            le=1000,
            description="How long a worker waits for more embed/classify/score requests to "
            "join one forward pass once the first has arrived",
        ),
    ] = 5.0
    max_task_batch: Annotated[
        int,
        Field(
            ge=1,
            le=4096,
            description="Most embed/classify/score inputs a worker runs as one batch (the "
            "waiting requests of one kind, length-sorted, in forward passes of up to 32)",
        ),
    ] = 256
    grammar_timeout_s: Annotated[
        float,
        Field(
            gt=0,
            le=600,
            description="Longest a worker spends turning a request's JSON schema into a "
            "grammar (on a thread of its own) before it refuses the request with a 400",
        ),
    ] = 20.0

    def backend_for(self, path: Path) -> Literal["llamacpp", "transformers"]:
        """The backend that serves ``path``: the configured one, else by the kind of path."""
        if self.backend != "auto":
            return self.backend
        return "transformers" if path.is_dir() else "llamacpp"

    @property
    def prefix_cache_cells(self) -> int:
        """The KV cells the prefix cache may hold."""
        if self.prefix_cache_max_tokens is not None:
            return self.prefix_cache_max_tokens
        return self.context_size // 4

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.max_model_len is not None and self.max_model_len > self.context_size:
            raise ValueError(
                f"max_model_len ({self.max_model_len}) exceeds context_size "
                f"({self.context_size}); raise engine.context_size or lower engine.max_model_len"
            )
        if self.max_batch_tokens < self.max_num_seqs:
            raise ValueError(
                "max_batch_tokens must be at least max_num_seqs so every running sequence "
                "can decode in one step; raise engine.max_batch_tokens"
            )
        return self
