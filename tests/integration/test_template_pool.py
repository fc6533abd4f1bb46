"""The chat template pool with its real child processes: a runaway template is stopped at the
time limit and its child killed, other renders go on meanwhile, and the pool recovers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from lmaas.errors import InternalError
from lmaas.gateway.serving.template import TemplatePool

# 10^10 iterations and no output: only a kill stops it.
RUNAWAY = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
HELLO = "hello {{ name }}"


@pytest.fixture
async def pool() -> AsyncIterator[TemplatePool]:
    p = TemplatePool(processes=2, timeout=60, max_chars=10_000)
    try:
        yield p
    finally:
        await p.close()


async def test_a_runaway_template_is_killed_at_the_time_limit_and_the_pool_recovers() -> None:
    pool = TemplatePool(processes=1, timeout=1.0, max_chars=10_000)
    try:
        assert await pool.render(HELLO, {"name": "a"}) == "hello a"
        (first,) = pool._children
        with pytest.raises(InternalError) as caught:
            await pool.render(RUNAWAY, {})
        assert caught.value.status_code == 500
        assert caught.value.code == "chat_template_limit"
        assert "limits.chat_template_timeout" in caught.value.message
        assert first.returncode is not None  # killed and reaped, not left running
        assert await pool.render(HELLO, {"name": "b"}) == "hello b"
        assert pool._children and first not in pool._children
    finally:
        await pool.close()


async def test_other_renders_go_on_while_a_template_runs_away(pool: TemplatePool) -> None:
    runaway = asyncio.create_task(pool.render(RUNAWAY, {}))
    for name in ("x", "y", "z"):
        assert await pool.render(HELLO, {"name": name}) == f"hello {name}"
    assert not runaway.done()
    runaway.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runaway
    # The cancelled render's child was killed: one child left, and it is idle.
    assert len(pool._children) == 1 and pool._idle == list(pool._children)


async def test_output_and_memory_limits_are_500s_naming_the_limit(pool: TemplatePool) -> None:
    with pytest.raises(InternalError, match=r"limits\.chat_template_max_chars"):
        await pool.render("{% for i in range(100000) %}xxxxxxxx{% endfor %}", {})
    with pytest.raises(InternalError, match="ran out of memory"):
        await pool.render("{{ 'x' * 2000000000 }}", {})
    assert await pool.render(HELLO, {"name": "still"}) == "hello still"


async def test_close_stops_every_child(pool: TemplatePool) -> None:
    await asyncio.gather(*(pool.render(HELLO, {"name": str(i)}) for i in range(4)))
    children = list(pool._children)
    assert len(children) == 2
    await pool.close()
    assert all(c.returncode is not None for c in children)
