"""The fine-tuning API (``/v1/fine_tuning/jobs``) in OpenAI's shapes (the ``openai`` SDK's
``client.fine_tuning.jobs``): the request, the job, its events and checkpoints.

``method`` is OpenAI's object; ``supervised`` is fine-tuning on the training file, with the
lmaas fields ``adapter`` (``lora``, the default on a CPU, or ``full``) and ``lora`` (rank,
alpha, dropout, target modules). lmaas adds the type ``distillation``: a teacher model's soft
labels and the training file's tokens (``alpha``, ``temperature``), into a student (a smaller
store model, or ``half``: every other layer of the teacher). Also lmaas's: ``quantization``
of the GGUF export, ``deploy_replicas`` (replicas serving the result), ``max_seq_len``,
``checkpoint_every_steps`` (checkpoints between epochs' ends too).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Auto = Literal["auto"]
JobStatus = Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
Quantization = Literal["Q4_0", "Q8_0", "Q4_K_M", "F16"]


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_epochs: int | Auto = "auto"
    batch_size: int | Auto = "auto"
    learning_rate_multiplier: float | Auto = "auto"


class LoraParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    r: Annotated[int, Field(ge=1, le=256)] = 8
    alpha: Annotated[float, Field(gt=0, le=1024)] = 16.0
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.05
    target_modules: (
        Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=32)] | None
    ) = None


class Supervised(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    adapter: Literal["lora", "full"] = "lora"  # lmaas
    lora: LoraParams = Field(default_factory=LoraParams)  # lmaas


class Distillation(BaseModel):
    """lmaas: train ``student`` toward ``teacher``'s soft labels."""

    model_config = ConfigDict(extra="forbid")

    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    teacher: Annotated[str, Field(min_length=1, max_length=200)] | None = None  # default: model
    student: Annotated[str, Field(min_length=1, max_length=200)] = "half"
    alpha: Annotated[float, Field(ge=0, le=1)] = 0.5
    temperature: Annotated[float, Field(gt=0, le=20)] = 2.0


class Method(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["supervised", "distillation"]
    supervised: Supervised | None = None
    distillation: Distillation | None = None


class FineTuneCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: Annotated[str, Field(min_length=1, max_length=200)]
    training_file: Annotated[str, Field(min_length=1, max_length=64)]
    validation_file: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    suffix: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    metadata: dict[str, Any] | None = None
    # lmaas
    quantization: Quantization = "Q4_0"
    deploy_replicas: Annotated[int, Field(ge=0, le=8)] = 1
    max_seq_len: Annotated[int, Field(ge=16, le=8192)] = 512
    # a checkpoint every this many steps besides each epoch's end (None: per epoch only)
    checkpoint_every_steps: Annotated[int, Field(ge=1, le=1_000_000)] | None = None


class FineTuneError(BaseModel):
    code: str
    message: str
    param: str | None = None


class FineTuningJob(BaseModel):
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    id: str
    model: str
    created_at: int
    finished_at: int | None = None
    fine_tuned_model: str | None = None
    organization_id: str = "lmaas"
    result_files: list[str] = Field(default_factory=list)
    status: JobStatus
    validation_file: str | None = None
    training_file: str
    hyperparameters: dict[str, Any]
    trained_tokens: int | None = None
    error: FineTuneError | None = None
    seed: int
    estimated_finish: int | None = None
    method: dict[str, Any]
    metadata: dict[str, str] | None = None
    # lmaas: how far it is, and the store version it made
    progress: dict[str, Any] | None = None
    model_version: str | None = None


class FineTuningJobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJob]
    has_more: bool


class FineTuningEvent(BaseModel):
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    id: str
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    data: dict[str, Any] | None = None
    type: Literal["message", "metrics"] = "message"


class FineTuningEventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningEvent]
    has_more: bool


class FineTuningCheckpoint(BaseModel):
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    id: str
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: dict[str, float | None]
    step_number: int


class FineTuningCheckpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningCheckpoint]
    first_id: str | None
    last_id: str | None
    has_more: bool
