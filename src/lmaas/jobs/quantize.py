"""The quantization handler: a job of kind ``quantize`` makes llama.cpp quantizations of one GGUF
version of the store and measures each beside the source, so that a user picks speed against
quality with numbers.

The steps, each recorded as a job item when it is done (a resumed job skips them): the
source's figures first, then per type: quantize (llama.cpp's quantizer in a child process,
requantizing a quantized source), measure (:mod:`lmaas.jobs.quantize_figures`, another child),
import the file as a new version of the same model (``latest`` does not move: a deployment
that follows it keeps its model) with the type as its alias (``q8_0``), and attach the
figures to the version. Each step is an event with its figures and counts in the job's
progress; a cancel is seen between steps and keeps the versions already made. The source and
the held-out file come, and the new versions go, through :class:`lmaas.jobs.storage.JobFiles`
(the store's disk beside the gateway, or the gateway from a Ray node).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

from lmaas.db import utc_now
from lmaas.errors import NotFoundError
from lmaas.jobs.context import JobContext, LeaseLost, Outcome
from lmaas.jobs.leases import Item, JobLeases
from lmaas.jobs.model_jobs import quantize_note
from lmaas.jobs.quantize_figures import Figures, FiguresError, builtin_text, measure
from lmaas.jobs.quantize_input import KIND, alias_of, held_out_text
from lmaas.jobs.storage import JobFiles
from lmaas.store.catalog import Catalog, VersionInfo
from lmaas.store.evaluations import Evaluations

log = logging.getLogger(__name__)
SOURCE: Final = "source"
BUILTIN: Final = "built-in English text"
QUANTIZE_TIMEOUT_S: Final = 3600.0
MEASURE_TIMEOUT_S: Final = 3600.0


def _quantize(src: Path, dst: Path, qtype: str) -> None:
    from lmaas.training.export import quantize_gguf

    quantize_gguf(src, dst, qtype, threads=1, timeout=QUANTIZE_TIMEOUT_S, allow_requantize=True)


def _measure(model: Path, text: Path) -> Figures:
    return measure(model, text, timeout=MEASURE_TIMEOUT_S)


@dataclass(frozen=True)
class QuantizeTools:
    """The two child processes a job runs (fakes in the unit tests)."""

    quantize: Callable[[Path, Path, str], None] = _quantize
    measure: Callable[[Path, Path], Figures] = _measure


def evaluation(figures: dict[str, Any]) -> dict[str, Any]:
    """A version's figures in the shape of an eval run's results (``Evaluations.attach``)."""
    criteria = [
        ("held-out perplexity", ("perplexity", "eval_tokens")),
        ("generation speed", ("tokens_per_second", "generated_tokens")),
        ("file size", ("size_bytes",)),
    ]
    return {
        "result_counts": {"total": 0, "passed": 0, "failed": 0, "errored": 0},
        "per_testing_criteria_results": [
            {
                "testing_criteria": name,
                "passed": 0,
                "failed": 0,
                "metrics": {key: figures[key] for key in keys},
            }
            for name, keys in criteria
        ],
    }


def _failure(exc: Exception) -> tuple[str, str] | None:
    from lmaas.training.export import ExportError
    from lmaas.training.formats import TrainingDataError

    kinds: dict[type[Exception], str] = {
        ExportError: "quantization_failed",
        FiguresError: "measurement_failed",
        TrainingDataError: "invalid_eval_file",
    }
    for kind, code in kinds.items():
        if isinstance(exc, kind):
            return code, str(exc)
    return None


def _summary(row: dict[str, Any]) -> str:
    where = f"{row['model']}:{row['version']}"
    if row.get("alias"):
        where += f" ({row['alias']})"
    return (
        f"{row['type']} {where}: {row['size_bytes'] / 1e6:.1f} MB, perplexity "
        f"{row['perplexity']:.3f}, {row['tokens_per_second']:.1f} tokens/s"
    )


class QuantizeHandler:
    kind = KIND

    def __init__(
        self,
        catalog: Catalog,
        files: JobFiles,
        evaluations: Evaluations,
        workdirs: Path,
        tools: QuantizeTools | None = None,
    ) -> None:
        self.catalog = catalog
        self.files = files
        self.evaluations = evaluations
        self.workdirs = workdirs
        self.tools = tools or QuantizeTools()

    async def run(self, ctx: JobContext) -> Outcome:
        job, given = ctx.job, ctx.job.input
        steps = [SOURCE, *given["types"]]
        try:
            source = await ctx.call(
                self.catalog.get_version, str(given["model"]), int(given["number"])
            )
        except NotFoundError as exc:
            return Outcome.failed("source_not_found", exc.message)
        resume = await ctx.call(ctx.leases.resume, job.id, ctx.runner, len(steps))
        if resume is None:
            raise LeaseLost
        done = await ctx.call(self._done, ctx.leases, job.id)
        # One folder per attempt: a runner that lost the lease never deletes its successor's.
        workdir = self.workdirs / job.id / f"attempt-{job.attempts}"
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            text = await ctx.call(self._text, workdir, given.get("eval_file"))
            await self._steps(ctx, source, steps, done, text)
        except Exception as exc:
            failure = _failure(exc)
            if failure is None:
                raise
            return Outcome.failed(*failure)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(workdir.parent, ignore_errors=True)  # what a runner that died left
        result = self._result(source, given, steps, done)
        made = ", ".join(f"{r['type']} → {r['alias']}" for r in result["versions"])
        return ctx.ended(
            ok_message=f"{len(result['versions'])} of {len(steps) - 1} types ({made or 'none'})",
            expired=ctx.expired.is_set(),
            result=result,
        )

    async def _steps(
        self,
        ctx: JobContext,
        source: VersionInfo,
        steps: list[str],
        done: dict[str, dict[str, Any]],
        text: Path,
    ) -> None:
        started, ran = time.monotonic(), 0
        for line, step in enumerate(steps, start=1):
            if step in done:
                continue
            if ctx.cancelled.is_set() or ctx.expired.is_set():
                return
            doing = "measuring the source" if step == SOURCE else "quantizing"
            await ctx.event("info", f"{step}: {doing}")
            row = await ctx.call(self._step, ctx.job.id, source, step, text)
            ran += 1
            left = sum(1 for s in steps[line:] if s not in done)
            eta = utc_now() + timedelta(seconds=(time.monotonic() - started) / ran * left)
            item = Item(step, line, ok=True, output=json.dumps(row))
            if not await ctx.call(ctx.leases.record, ctx.job.id, ctx.runner, [item], eta_at=eta):
                raise LeaseLost
            done[step] = row
            await ctx.event("info", _summary(row), row)

    # -- the blocking parts (on a thread) -------------------------------------------------------

    @staticmethod
    def _done(leases: JobLeases, job_id: str) -> dict[str, dict[str, Any]]:
        """The steps earlier attempts finished, with their figures."""
        rows = (json.loads(output) for output in leases.outputs(job_id, ok=True))
        return {str(row["step"]): row for row in rows}

    def _text(self, workdir: Path, file_id: str | None) -> Path:
        """The held-out text as a file of the work directory."""
        from lmaas.training.formats import read_examples

        if file_id is None:
            text = builtin_text()
        else:
            text = held_out_text(read_examples(_lines(self.files, file_id)))
        path = workdir / "held-out.txt"
        path.write_text(text, "utf-8")
        return path

    def _step(self, job_id: str, source: VersionInfo, step: str, text: Path) -> dict[str, Any]:
        source_path = self.files.model_path(source, job_id=job_id)
        if step == SOURCE:
            figures = self.tools.measure(source_path, text)
            version, alias = source, None
        else:
            out = text.parent / f"{step}.gguf"
            self.tools.quantize(source_path, out, step)
            figures = self.tools.measure(out, text)
            version = self._import(job_id, source, step, out)
            alias = alias_of(step)
            self.catalog.set_alias(source.model, alias, version.number)
            out.unlink(missing_ok=True)
        row = {
            "step": step,
            "type": version.quantization or step,
            "model": version.model,
            "version": version.number,
            "alias": alias,
            **figures.as_dict(),
        }
        self.evaluations.attach(
            version.model,
            version.number,
            run_id=f"{job_id}:{step}",
            eval_id=job_id,
            eval_name=f"quantization figures ({job_id})",
            results=evaluation(row),
        )
        return row

    def _import(self, job_id: str, source: VersionInfo, qtype: str, path: Path) -> VersionInfo:
        """The version of ``path``, imported once: a resumed job finds the one it made."""
        note = quantize_note(job_id, qtype, source.model, source.number)
        for version in self.catalog.list_versions(source.model):
            if version.source == note and version.error is None:
                return version
        description = f"{qtype} quantization of version {source.number}"
        return self.files.store_version(
            job_id, source.model, path, source=note, description=description, moves_latest=False
        )

    def _result(
        self,
        source: VersionInfo,
        given: dict[str, Any],
        steps: list[str],
        done: dict[str, dict[str, Any]],
    ) -> dict[str, Any]:
        return {
            "model": source.model,
            "source": done.get(SOURCE),
            "versions": [done[step] for step in steps[1:] if step in done],
            "held_out": given.get("eval_file") or BUILTIN,
            "aliases_announced": False,
        }


def _lines(files: JobFiles, file_id: str) -> Iterator[bytes]:
    with files.open_input(file_id) as handle:
        yield from handle
