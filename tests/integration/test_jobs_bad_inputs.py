"""The table of bad requests to the Files and Batch APIs and /admin/jobs (``JOB_CASES`` of
tests/bad_inputs.py), in process: each is a 4xx in the OpenAI envelope naming its field, and
leaves no batch queued. One app serves the whole table (none of its requests changes
anything); tests/e2e/test_hostile.py sends the same table to a real server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from lmaas.store.files import Viewer
from tests.bad_inputs import JOB_CASES, JobCase, Upload, check_error_envelope, fill, multipart
from tests.integration.test_batches_api import (
    EMBED,
    Batches,
    chat_line,
    embed_line,
    finished,
    jsonl,
)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Batches]:
    batches = Batches(tmp_path)
    batches.recorder.start()
    yield batches
    await batches.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def table(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[Batches, dict[str, str]]]:
    batches = Batches(tmp_path_factory.mktemp("job-cases"))
    batches.recorder.start()
    yield batches, await job_case_names(batches)
    await batches.close()


async def job_case_names(api: Batches) -> dict[str, str]:
    """What the cases' ``{names}`` stand for: files of alice (the user) and bob, and a
    batch of alice's that has ended."""
    names = {
        "batch_file": await api.upload("alice", jsonl(chat_line("a"), chat_line("b"))),
        "mixed_file": await api.upload("alice", jsonl(chat_line("a"), embed_line("b", "x"))),
        "data_file": await api.upload("alice", b"some bytes", purpose="user_data"),
        "other_file": await api.upload("bob", jsonl(chat_line("a"))),
    }
    batch = (await api.create("alice", names["batch_file"])).json()
    cancelled = await api.as_["alice"].post(f"/v1/batches/{batch['id']}/cancel")
    assert cancelled.json()["status"] == "cancelled"
    names["finished_batch"] = batch["id"]
    return names


async def send(http: httpx.AsyncClient, case: JobCase, names: dict[str, str]) -> httpx.Response:
    path = fill(case.path, names)
    if isinstance(case.body, Upload):
        content_type, data = multipart(case.body)
        return await http.request(
            case.method, path, content=data, headers={"Content-Type": content_type}
        )
    if isinstance(case.body, bytes):
        headers = {"Content-Type": "application/json"}
        return await http.request(case.method, path, content=case.body, headers=headers)
    return await http.request(case.method, path, json=fill(case.body, names))


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("case", JOB_CASES, ids=[c.id for c in JOB_CASES])
async def test_bad_job_input_table(table: tuple[Batches, dict[str, str]], case: JobCase) -> None:
    api, names = table
    r = await send(api.as_["admin" if case.admin else "alice"], case, names)
    assert r.status_code == case.status, r.text
    error = check_error_envelope(r.json())
    assert error["param"] == case.param, error
    if case.code is not None:
        assert error["code"] == case.code, error
    jobs = api.jobs.list(Viewer(None, admin=True)).jobs
    assert [job.id for job in jobs] == [names["finished_batch"]]  # nothing else queued


async def test_a_line_for_a_model_that_cannot_serve_its_endpoint_is_an_error_line(
    api: Batches,
) -> None:
    """A chat line for an embeddings model, an embeddings line for a chat model: each a 400
    naming the models that can, in the error file; the batch itself completes."""
    chat = jsonl(chat_line("ok"), chat_line("to-embedder", model="embedder"))
    embed = jsonl(
        embed_line("ok", "x"),
        {**embed_line("to-chat", "x"), "body": {"model": "fake", "input": "x"}},
    )
    chat_batch = (await api.create("alice", await api.upload("alice", chat))).json()
    embed_batch = (await api.create("alice", await api.upload("alice", embed), EMBED)).json()
    api.start_runner()
    for batch, bad, able in (
        (chat_batch, "to-embedder", "fake"),
        (embed_batch, "to-chat", "embedder"),
    ):
        done = await api.wait("alice", batch["id"], finished)
        assert done["status"] == "completed"
        assert done["request_counts"] == {"total": 2, "completed": 1, "failed": 1}
        (line,) = await api.content("alice", done["error_file_id"])
        assert line["custom_id"] == bad and line["response"]["status_code"] == 400
        assert line["error"]["code"] == "unsupported_task"
        assert f"models that can: {able}" in line["error"]["message"]
