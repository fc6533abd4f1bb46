"""The quantization job on a real SQLite catalog, store, file store and job tables, with the two
child processes (llama.cpp's quantizer and the measurement) replaced by fakes: a version per
type with its alias and figures, ``latest`` left alone, a cancel between types, a resumed job
that neither redoes a finished step nor imports a version twice, and the checks a request
meets before anything is created."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from lmaas.db import create_db_engine, session_factory, upgrade_to_head
from lmaas.errors import InvalidRequestError, LmaasError, NotFoundError
from lmaas.gateway.management.quantize import QuantizeManagement
from lmaas.jobs.context import JobContext
from lmaas.jobs.leases import JobLeases
from lmaas.jobs.quantize import QuantizeHandler, QuantizeTools
from lmaas.jobs.quantize_figures import Figures
from lmaas.jobs.quantize_input import check_types, held_out_text
from lmaas.jobs.storage import LocalJobFiles
from lmaas.jobs.store import CANCELLED, COMPLETED, JobStore
from lmaas.keys import KeyInfo
from lmaas.protocol.quantize import QuantizeBody
from lmaas.store.blobs import BlobStore
from lmaas.store.catalog import Catalog
from lmaas.store.evaluations import Evaluations
from lmaas.store.files import FileLimits, FileStore, Viewer
from lmaas.store.model_store import ModelStore
from lmaas.training.formats import read_examples
from tests.clock import FakeClock
from tests.unit.store.gguf_builder import F16, STRING, UINT32, GGUFBuilder

MODEL = "tiny"
FILE_TYPES = {"Q4_1": 3, "Q4_0": 2, "Q8_0": 7, "F16": 1}
PERPLEXITY = {"Q4_1": 20.0, "Q4_0": 22.5, "Q8_0": 19.5, "F16": 19.0}
ADMIN = KeyInfo("k" * 12, "ops", "admin", None, datetime(2026, 1, 1, tzinfo=UTC), None, None)


def tiny_gguf(path: Path, qtype: str) -> Path:
    b = GGUFBuilder()
    b.add("general.architecture", STRING, "llama")
    b.add("general.name", STRING, f"tiny {qtype}")
    b.add("general.file_type", UINT32, FILE_TYPES[qtype])
    b.add("llama.context_length", UINT32, 64)
    b.tensor("token_embd.weight", (8, 16), F16)
    path.write_bytes(b.build())
    return path


class FakeTools:
    """Quantize writes a tiny GGUF of the type; measure answers the type's figures."""

    def __init__(self) -> None:
        self.quantized: list[str] = []
        self.measured: list[str] = []
        self.texts: list[str] = []
        self.on_quantize: Any = None

    def quantize(self, src: Path, dst: Path, qtype: str) -> None:
        assert src.is_file()
        self.quantized.append(qtype)
        tiny_gguf(dst, qtype)
        if self.on_quantize is not None:
            self.on_quantize(qtype)

    def measure(self, model: Path, text: Path) -> Figures:
        qtype = {v: k for k, v in FILE_TYPES.items()}[_file_type(model)]
        self.measured.append(qtype)
        self.texts.append(text.read_text("utf-8"))
        return Figures(PERPLEXITY[qtype], 100, 50.0, 32, model.stat().st_size)


def _file_type(path: Path) -> int:
    from lmaas.store.gguf import read_gguf_metadata

    value = read_gguf_metadata(path).metadata["general.file_type"]
    assert isinstance(value, int)
    return value


@dataclasses.dataclass
class Rig:
    tmp: Path
    clock: FakeClock
    store: ModelStore
    files: FileStore
    evaluations: Evaluations
    jobs: JobStore
    leases: JobLeases
    tools: FakeTools

    def handler(self, evaluations: Evaluations | None = None) -> QuantizeHandler:
        tools = QuantizeTools(quantize=self.tools.quantize, measure=self.tools.measure)
        return QuantizeHandler(
            self.store.catalog,
            LocalJobFiles(self.files, self.store),
            evaluations or self.evaluations,
            self.tmp / "home" / "jobs",
            tools,
        )

    def management(self) -> QuantizeManagement:
        return QuantizeManagement(self.jobs, self.files, self.store, None)

    def create(self, types: list[str], ref: str = "1", eval_file: str | None = None) -> str:
        body = QuantizeBody(types=types, eval_file=eval_file)
        return self.management()._create(ADMIN, MODEL, ref, body).id

    def run(self, runner: str = "r1", handler: QuantizeHandler | None = None) -> Any:
        job = self.leases.claim(runner)
        assert job is not None
        ctx = JobContext(job=job, runner=runner, leases=self.leases)
        return ctx, asyncio.run((handler or self.handler()).run(ctx))


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    engine = create_db_engine(f"sqlite:///{tmp_path}/catalog.db")
    upgrade_to_head(engine)
    sessions = session_factory(engine)
    clock = FakeClock()
    store = ModelStore(Catalog(sessions), BlobStore(tmp_path / "home"), max_upload_bytes=1 << 22)
    store.import_file(MODEL, tiny_gguf(tmp_path / "source.gguf", "Q4_1"))
    yield Rig(
        tmp_path,
        clock,
        store,
        FileStore(sessions, store, FileLimits(1 << 20, 1 << 16)),
        Evaluations(sessions),
        JobStore(sessions, clock=clock),
        JobLeases(sessions, lease_seconds=30, max_attempts=3, clock=clock),
        FakeTools(),
    )
    engine.dispose()


def figures_of(rig: Rig, number: int) -> dict[str, Any]:
    (found,) = rig.evaluations.of_version(MODEL, number)
    return {
        k: v for c in found.results["per_testing_criteria_results"] for k, v in c["metrics"].items()
    }


def test_each_type_becomes_an_aliased_version_with_its_figures(rig: Rig) -> None:
    job_id = rig.create(["Q8_0", "Q4_0"])
    _, outcome = rig.run()
    assert outcome.status == COMPLETED, outcome
    versions = {v.number: v for v in rig.store.catalog.list_versions(MODEL)}
    assert {n: v.quantization for n, v in versions.items()} == {1: "Q4_1", 2: "Q8_0", 3: "Q4_0"}
    assert "q8_0" in versions[2].aliases and "q4_0" in versions[3].aliases
    assert rig.store.catalog.get_model(MODEL).latest == 1  # what follows latest stays put
    for number, qtype in ((1, "Q4_1"), (2, "Q8_0"), (3, "Q4_0")):
        figures = figures_of(rig, number)
        assert figures["perplexity"] == PERPLEXITY[qtype]
        assert figures["size_bytes"] == versions[number].size_bytes
        assert figures["tokens_per_second"] == 50.0
    result = outcome.result
    assert result["source"]["version"] == 1 and result["source"]["type"] == "Q4_1"
    assert [(r["type"], r["version"], r["alias"]) for r in result["versions"]] == [
        ("Q8_0", 2, "q8_0"),
        ("Q4_0", 3, "q4_0"),
    ]
    assert result["held_out"] == "built-in English text"
    assert "Margaret" in rig.tools.texts[0]  # the built-in text
    messages = [e.message for e in rig.jobs.events(job_id, Viewer(None, admin=True)).events]
    assert any(m.startswith("Q8_0 tiny:2 (q8_0):") and "perplexity 19.500" in m for m in messages)
    assert not (rig.tmp / "home" / "jobs" / job_id).exists()


def test_the_held_out_text_comes_from_the_eval_file(rig: Rig) -> None:
    lines = [{"text": "The first document."}, {"text": "The second one."}]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    file = rig.files.add([data], purpose="fine-tune", filename="h.jsonl", owner_key_id=None)
    rig.create(["F16"], eval_file=file.id)
    _, outcome = rig.run()
    assert outcome.status == COMPLETED and outcome.result["held_out"] == file.id
    assert rig.tools.texts == ["The first document.\n\nThe second one."] * 2


def test_a_cancel_is_seen_between_types(rig: Rig) -> None:
    rig.create(["Q8_0", "Q4_0", "F16"])
    job = rig.leases.claim("r1")
    assert job is not None
    ctx = JobContext(job=job, runner="r1", leases=rig.leases)
    rig.tools.on_quantize = lambda qtype: ctx.cancelled.set()
    outcome = asyncio.run(rig.handler().run(ctx))
    assert outcome.status == CANCELLED
    assert rig.tools.quantized == ["Q8_0"]  # the type under way finished, no other began
    assert [r["type"] for r in outcome.result["versions"]] == ["Q8_0"]
    assert len(rig.store.catalog.list_versions(MODEL)) == 2


class FlakyEvaluations(Evaluations):
    """Fails once on attaching the figures of ``step``, as a runner that dies there."""

    def __init__(self, inner: Evaluations, step: str) -> None:
        self.inner, self.step, self.failed = inner, step, False

    def attach(self, model: str, number: int, **kwargs: Any) -> bool:
        if kwargs["run_id"].endswith(f":{self.step}") and not self.failed:
            self.failed = True
            raise RuntimeError("the runner died here")
        return self.inner.attach(model, number, **kwargs)


def test_a_resumed_job_skips_finished_steps_and_imports_once(rig: Rig) -> None:
    job_id = rig.create(["Q8_0", "Q4_0"])
    flaky = FlakyEvaluations(rig.evaluations, "Q4_0")
    with pytest.raises(RuntimeError, match="died"):
        rig.run("r1", rig.handler(flaky))  # after Q4_0 was imported, before it was recorded
    rig.clock.advance(31)  # r1's lease expires
    _, outcome = rig.run("r2", rig.handler(flaky))
    assert outcome.status == COMPLETED
    assert rig.tools.quantized == ["Q8_0", "Q4_0", "Q4_0"]  # Q8_0 was done and recorded
    assert rig.tools.measured == ["Q4_1", "Q8_0", "Q4_0", "Q4_0"]
    numbers = [v.number for v in rig.store.catalog.list_versions(MODEL)]
    assert numbers == [1, 2, 3]  # Q4_0 imported by r1 is found again, not imported twice
    assert [r["version"] for r in outcome.result["versions"]] == [2, 3]
    assert rig.jobs.get(job_id, Viewer(None, admin=True)).progress.done == 3


def test_a_failed_quantization_fails_the_job_with_its_words(rig: Rig) -> None:
    from lmaas.training.export import ExportError

    def broken(src: Path, dst: Path, qtype: str) -> None:
        raise ExportError(f"quantizing to {qtype} failed: llama.cpp said no")

    rig.create(["Q8_0"])
    handler = rig.handler()
    handler.tools = QuantizeTools(quantize=broken, measure=rig.tools.measure)
    _, outcome = rig.run(handler=handler)
    assert outcome.error == {
        "code": "quantization_failed",
        "message": "quantizing to Q8_0 failed: llama.cpp said no",
    }
    assert len(rig.store.catalog.list_versions(MODEL)) == 1


# -- what a request meets before anything is created ---------------------------------------------


@pytest.mark.parametrize(
    ("types", "code", "words"),
    [
        ([], "empty_types", "Q4_0, Q4_1, Q8_0, Q4_K_M, F16"),
        (["Q4_0", "Q3_X"], "unknown_quantization_type", "'Q3_X'; one of Q4_0, Q4_1, Q8_0"),
        (["Q8_0", "Q4_0", "Q8_0"], "duplicate_types", "Q8_0 more than once"),
    ],
)
def test_bad_types_are_refused_naming_the_field(types: list[str], code: str, words: str) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        check_types(types)
    assert refused.value.param == "types" and refused.value.code == code
    assert words in refused.value.message


@pytest.mark.parametrize(
    ("name", "ref", "types", "param", "error"),
    [
        ("nope", "1", ["Q8_0"], "model", NotFoundError),
        (MODEL, "9", ["Q8_0"], "version", NotFoundError),
        (MODEL, "prod", ["Q8_0"], "version", NotFoundError),
        (MODEL, "1", ["q8_0"], "types", InvalidRequestError),
    ],
)
def test_bad_requests_create_nothing(
    rig: Rig, name: str, ref: str, types: list[str], param: str, error: type[LmaasError]
) -> None:
    with pytest.raises(error) as refused:
        rig.management()._create(ADMIN, name, ref, QuantizeBody(types=types))
    assert refused.value.param == param
    assert rig.jobs.list(Viewer(None, admin=True)).jobs == []


def test_a_folder_version_and_a_wrong_file_are_refused(rig: Rig) -> None:
    data = b'{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {}}\n'
    batch = rig.files.add([data], purpose="batch", filename="b.jsonl", owner_key_id=None)
    with pytest.raises(InvalidRequestError) as wrong:
        rig.create(["Q8_0"], eval_file=batch.id)
    assert (wrong.value.param, wrong.value.code) == ("eval_file", "invalid_file_purpose")
    with pytest.raises(NotFoundError) as missing:
        rig.create(["Q8_0"], eval_file="file-nope")
    assert missing.value.param == "eval_file"
    from lmaas.jobs.quantize_input import check_source

    folder = dataclasses.replace(rig.store.catalog.get_version(MODEL, 1), format="hf")
    with pytest.raises(InvalidRequestError) as not_gguf:
        check_source(folder)
    assert (not_gguf.value.param, not_gguf.value.code) == ("version", "version_not_gguf")
    assert rig.jobs.list(Viewer(None, admin=True)).jobs == []


def test_held_out_text_of_each_training_format() -> None:
    lines = [
        '{"messages": [{"role": "user", "content": "Hi"}, '
        '{"role": "assistant", "content": "Hello there."}]}',
        '{"prompt": "Two plus two", "completion": " is four."}',
    ]
    chat, prompt = (held_out_text(read_examples([line])) for line in lines)
    assert chat == "Hi\nHello there."
    assert prompt == "Two plus two\n is four."


class FakeDeployments:
    def __init__(self) -> None:
        self.told: list[str] = []

    async def on_aliases_changed(self, model: str) -> None:
        self.told.append(model)


def test_the_deployments_hear_once_of_the_aliases_a_job_moved(rig: Rig) -> None:
    job_id = rig.create(["Q8_0"])
    _, outcome = rig.run()
    deployments: Any = FakeDeployments()
    management = QuantizeManagement(rig.jobs, rig.files, rig.store, deployments)
    asyncio.run(management.announce_finished())
    assert deployments.told == []  # not ended yet: the runner still holds it
    rig.leases.finish(job_id, "r1", outcome.status, message="done", result=outcome.result)
    asyncio.run(management.announce_finished())
    asyncio.run(management.announce_finished())
    assert deployments.told == [MODEL]
    assert rig.jobs.get(job_id, Viewer(None, admin=True)).result["aliases_announced"] is True
