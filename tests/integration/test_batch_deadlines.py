"""A batch's completion window, in process with the job runner's loop and a clock moved by
hand: a batch not finished by ``expires_at`` ends ``expired`` (OpenAI's status), with the lines
answered in its output file and every line not run in its error file as ``batch_expired``,
whether it never left the queue or was running; the window is any duration up to
``jobs.max_completion_window_seconds``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lmaas.jobs.leases import Item
from tests.bad_inputs import expect_error as error
from tests.clock import FakeClock
from tests.integration.test_batches_api import Batches, chat_line, finished, jsonl

EXPIRED = "This request could not be executed before the completion window expired."


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Batches]:
    batches = Batches(tmp_path, clock=FakeClock())
    batches.recorder.start()
    yield batches
    await batches.close()


def clock(api: Batches) -> FakeClock:
    fake = api.jobs._clock  # the one the fixture gave
    assert isinstance(fake, FakeClock)
    return fake


async def test_the_window_is_any_duration_up_to_the_setting(api: Batches) -> None:
    file_id = await api.upload("alice", jsonl(chat_line("a")))
    for window, seconds in (("24h", 86_400), ("90s", 90), ("30m", 1800), ("1d", 86_400)):
        r = await api.create("alice", file_id, window=window)
        assert r.status_code == 200, r.text
        batch = r.json()
        assert batch["completion_window"] == window
        assert batch["expires_at"] - batch["created_at"] == seconds
    message = error(await api.create("alice", file_id, window="86401s"), 400, "completion_window")
    assert "jobs.max_completion_window_seconds" in message


async def test_a_batch_still_queued_at_its_deadline_expires_with_every_line_in_errors(
    api: Batches,
) -> None:
    data = jsonl(chat_line("a")) + b"\n" + jsonl(chat_line("b"), chat_line("c"))
    file_id = await api.upload("alice", data)  # a blank line 2: lines keep their numbers
    batch = (await api.create("alice", file_id, window="1h")).json()
    clock(api).advance(3601)
    api.start_runner()
    done = await api.wait("alice", batch["id"], finished)
    assert done["status"] == "expired", done
    assert done["expired_at"] is not None and done["in_progress_at"] is None
    assert done["completed_at"] is None and done["output_file_id"] is None
    assert done["request_counts"] == {"total": 3, "completed": 0, "failed": 0}
    errors = await api.content("alice", done["error_file_id"])
    assert [e["custom_id"] for e in errors] == ["a", "b", "c"]
    for line in errors:
        assert line["response"] is None
        assert line["error"] == {"code": "batch_expired", "message": EXPIRED}
    assert api.chat.requests == []
    again = await api.as_["alice"].post(f"/v1/batches/{batch['id']}/cancel")
    error(again, 409, "batch_id", "job_finished")
    job = (await api.as_["admin"].get(f"/admin/jobs/{batch['id']}")).json()
    assert job["status"] == "expired" and job["expires_at"] is not None


async def test_a_running_batch_stops_at_its_deadline_and_keeps_what_was_done(
    api: Batches,
) -> None:
    data = jsonl(*(chat_line(c) for c in "abcde"))
    batch = (await api.create("alice", await api.upload("alice", data), window="10s")).json()
    # An earlier attempt answered `a` and saw `c` fail; then the runner died.
    claimed = api.leases.claim("dead-runner")
    assert claimed is not None and claimed.id == batch["id"]
    failed_c = '{"custom_id":"c","response":null,"error":{"code":"x","message":"y"}}'
    earlier = [Item("a", 1, True, '{"custom_id":"a"}'), Item("c", 3, False, failed_c)]
    assert api.leases.record(batch["id"], "dead-runner", earlier, eta_at=None)
    api.leases.release_runner("dead-runner")
    api.chat.hold = asyncio.Event()  # the lines sent now wait in the engine
    api.start_runner(line_concurrency=2)
    for _ in range(1000):
        if len(api.chat.requests) == 2:
            break
        await asyncio.sleep(0.01)
    assert len(api.chat.requests) == 2  # b and d, in flight
    clock(api).advance(11)  # the lease (30 s) still holds; the window (10 s) has ended
    done = await api.wait("alice", batch["id"], finished)
    assert done["status"] == "expired", done
    assert done["in_progress_at"] is not None and done["expired_at"] is not None
    assert done["request_counts"] == {"total": 5, "completed": 1, "failed": 1}
    assert len(api.chat.aborted) == 2  # the lines in flight were ended in the engine
    output = await api.content("alice", done["output_file_id"])
    assert [line["custom_id"] for line in output] == ["a"]
    errors = await api.content("alice", done["error_file_id"])
    assert [(e["custom_id"], e["error"]["code"]) for e in errors] == [
        ("b", "batch_expired"),
        ("c", "x"),
        ("d", "batch_expired"),
        ("e", "batch_expired"),
    ]
    events = (await api.as_["admin"].get(f"/admin/jobs/{batch['id']}/events")).json()
    messages = [e["message"] for e in events["data"]]
    assert "the completion window ended: lines not run are expired" in messages
    assert messages[-1] == "expired; 1 lines answered, 4 failed or not run"
