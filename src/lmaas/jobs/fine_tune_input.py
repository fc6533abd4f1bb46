"""What a fine-tuning job is asked to do, checked when it is created (no torch here: the
gateway calls this) and read back by the runner's handler.

Checked, with 4xx naming the field and nothing created: the files (purpose ``fine-tune``,
every line a training example of one format, with line numbers), the base model (a store
version of a causal LM: not an embedding model or a classifier), the method and its
hyperparameters (ranges, ``auto`` resolved from the data's size), the suffix (it becomes part
of a model name), and for distillation the teacher and a student smaller than it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, BinaryIO, Final

from lmaas.errors import InvalidRequestError, NotFoundError
from lmaas.protocol.fine_tuning import FineTuneCreate, Hyperparameters
from lmaas.store.catalog import VersionInfo
from lmaas.store.files import FileStore, Viewer
from lmaas.store.model_store import ModelStore
from lmaas.training.formats import validate_file
from lmaas.training.hyperparameters import HyperparameterError, resolve

KIND: Final = "fine_tune"
ID_PREFIX: Final = "ftjob"
SUFFIX_RE: Final = re.compile(r"^[a-z0-9][a-z0-9._-]{0,39}$")
# What transformers' causal-LM loaders take: a GGUF of these, or a folder of a *ForCausalLM.
GGUF_ARCHITECTURES: Final = frozenset({"llama"})


@dataclass(frozen=True, slots=True)
class FileCheck:
    id: str
    examples: int
    format: str


def check_file(files: FileStore, viewer: Viewer, file_id: str, param: str) -> FileCheck:
    try:
        file, handle = files.open(file_id, viewer)
    except NotFoundError as exc:
        raise NotFoundError(exc.message, param=param, code=exc.code) from None
    with handle:
        if file.purpose != "fine-tune":
            raise InvalidRequestError(
                f"file {file.id} has purpose {file.purpose!r}; training reads a file uploaded "
                "with purpose 'fine-tune'",
                param=param,
                code="invalid_file_purpose",
            )
        report = validate_file(_lines(handle), max_errors=5)
    if report.errors:
        shown = "; ".join(str(e) for e in report.errors)
        raise InvalidRequestError(f"{param} {file.id}: {shown}", param=param, code="invalid_file")
    return FileCheck(file.id, report.examples, str(report.format))


def _lines(handle: BinaryIO) -> Any:
    yield from handle


def trainable(version: VersionInfo, param: str) -> None:
    """400 unless ``version`` is a causal LM transformers can train."""
    arch = version.architecture or ""
    ok = (version.format == "gguf" and arch in GGUF_ARCHITECTURES) or (
        version.format == "hf" and arch.endswith("ForCausalLM")
    )
    if not ok:
        raise InvalidRequestError(
            f"{version.model}:{version.number} ({version.format}, "
            f"{arch or 'unknown architecture'}) "
            "cannot be fine-tuned: lmaas trains causal language models (a llama GGUF, or a "
            "Hugging Face *ForCausalLM folder), not embedding models or classifiers",
            param=param,
            code="model_not_trainable",
        )


def method_of(body: FineTuneCreate) -> tuple[str, dict[str, Any], Hyperparameters]:
    """(lmaas method: lora, full or distillation; its settings; its hyperparameters)."""
    method = body.method
    if method is None or method.type == "supervised":
        supervised = method.supervised if method is not None else None
        hyper = supervised.hyperparameters if supervised else body.hyperparameters
        adapter = supervised.adapter if supervised else "lora"
        lora = supervised.lora.model_dump() if supervised else {}
        return adapter, {"lora": lora}, hyper or Hyperparameters()
    distillation = method.distillation
    if distillation is None:
        raise InvalidRequestError(
            "method.distillation is needed with method.type 'distillation'",
            param="method.distillation",
        )
    settings = distillation.model_dump(exclude={"hyperparameters"})
    return "distillation", settings, distillation.hyperparameters


def resolved_hyperparameters(
    n_examples: int, method: str, given: Hyperparameters, seed: int
) -> dict[str, Any]:
    try:
        hp = resolve(
            n_examples,
            method,  # type: ignore[arg-type]
            n_epochs=given.n_epochs,
            batch_size=given.batch_size,
            learning_rate_multiplier=given.learning_rate_multiplier,
            seed=seed,
        )
    except HyperparameterError as exc:
        raise InvalidRequestError(str(exc), param=f"hyperparameters.{exc.param}") from None
    multiplier = given.learning_rate_multiplier
    return {
        "n_epochs": hp.n_epochs,
        "batch_size": hp.batch_size,
        "learning_rate_multiplier": 1.0 if multiplier == "auto" else float(multiplier),
        "learning_rate": hp.learning_rate,
    }


def check_suffix(suffix: str | None) -> str:
    if suffix is None:
        return "lmaas"
    if not SUFFIX_RE.fullmatch(suffix):
        raise InvalidRequestError(
            "suffix becomes part of the model's name: 1 to 40 characters of a-z, 0-9, '.', '_' "
            "and '-', starting with a letter or digit",
            param="suffix",
        )
    return suffix


def output_names(base: str, suffix: str, job_id: str) -> tuple[str, str]:
    """(the store model the job makes, the served name of its deployment): OpenAI's
    ``ft:<base>:<suffix>:<job>`` is the served name (the store's names have no ``:``)."""
    short = job_id.rpartition("_")[2][-10:]
    store = f"ft-{base}-{suffix}"[: 127 - len(short)] + f"-{short}"
    return store, f"ft:{base}:{suffix}:{job_id}"


def check_student(teacher: VersionInfo, student: VersionInfo | None) -> None:
    if student is None:
        return
    trainable(student, "method.distillation.student")
    if (
        teacher.parameter_count is not None
        and student.parameter_count is not None
        and student.parameter_count >= teacher.parameter_count
    ):
        raise InvalidRequestError(
            f"the student ({student.model}:{student.number}, {student.parameter_count} "
            f"parameters) must be smaller than the teacher ({teacher.parameter_count})",
            param="method.distillation.student",
            code="student_not_smaller",
        )


def vocabulary(store: ModelStore, version: VersionInfo) -> tuple[str, ...] | None:
    """The tokens of a version's tokenizer in id order, read from its files without loading
    it (a GGUF's ``tokenizer.ggml.tokens``, a folder's ``tokenizer.json``); None when unknown."""
    path = store.path_of(version)
    if version.format == "gguf":
        from lmaas.training.gguf_source import read_source_metadata

        tokens = read_source_metadata(path).get("tokenizer.ggml.tokens")
        return tuple(str(t) for t in tokens) if isinstance(tokens, list) else None
    try:
        data = json.loads((path / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    vocab = dict(data.get("model", {}).get("vocab") or {})
    for added in data.get("added_tokens") or []:
        vocab[str(added.get("content"))] = int(added.get("id", -1))
    return tuple(token for token, _ in sorted(vocab.items(), key=lambda kv: kv[1]))


def check_tokenizers(store: ModelStore, teacher: VersionInfo, student: VersionInfo | None) -> None:
    """400 when an explicit student does not share the teacher's tokenizer (a student cut
    from the teacher always does)."""
    if student is None:
        return
    mine, theirs = vocabulary(store, teacher), vocabulary(store, student)
    if mine is not None and theirs is not None and mine != theirs:
        raise InvalidRequestError(
            f"the teacher ({teacher.model}:{teacher.number}, {len(mine)} tokens) and the student "
            f"({student.model}:{student.number}, {len(theirs)} tokens) have different "
            "tokenizers: distillation compares their next-token distributions token by token",
            param="method.distillation.teacher",
            code="tokenizer_mismatch",
        )
