"""What a job that makes model versions (``fine_tune``, ``quantize``) reads and where it writes,
as its input says: the store versions it starts from, the files it reads, and the one model its
new versions belong to. The gateway asks this of a job before it lets a runner on another node
fetch a blob or store a version for it (:mod:`lmaas.gateway.runner_access`); nothing here
touches a database or a disk.
"""

from __future__ import annotations

from typing import Final

from lmaas.jobs.store import JobInfo

FINE_TUNE: Final = "fine_tune"
QUANTIZE: Final = "quantize"
MODEL_KINDS: Final = frozenset({FINE_TUNE, QUANTIZE})


def source_versions(job: JobInfo) -> list[tuple[str, int]]:
    """The store versions (model, number) the job reads: a fine-tune's base (its teacher, for
    a distillation) and its student when one is named; a quantization's source."""
    given = job.input
    if job.kind == FINE_TUNE:
        refs = [given["base"], (given.get("method_settings") or {}).get("student_ref")]
        return [(str(r["model"]), int(r["number"])) for r in refs if r]
    if job.kind == QUANTIZE:
        return [(str(given["model"]), int(given["number"]))]
    return []


def fine_tune_note(job_id: str, model: str, number: int) -> str:
    """The source note of a fine-tune's new versions (``jobs/fine_tune_work.py``)."""
    return f"fine-tune {job_id} of {model}:{number}"


def quantize_note(job_id: str, qtype: str, model: str, number: int) -> str:
    """The source note of a quantization's new version of type ``qtype`` (``jobs/quantize.py``)."""
    return f"quantize {job_id}: {qtype} of {model}:{number}"


def version_notes(job: JobInfo) -> set[str]:
    """Every source note a version the job makes may carry: the gateway takes no other from a
    runner on another node."""
    given = job.input
    if job.kind == FINE_TUNE:
        base = given["base"]
        return {fine_tune_note(job.id, str(base["model"]), int(base["number"]))}
    if job.kind == QUANTIZE:
        model, number = str(given["model"]), int(given["number"])
        return {quantize_note(job.id, str(t), model, number) for t in given.get("types") or ()}
    return set()


def input_files(job: JobInfo) -> list[str]:
    """The ids of the files the job reads: a fine-tune's training and validation files, a
    quantization's held-out file."""
    names = {FINE_TUNE: ("training_file", "validation_file"), QUANTIZE: ("eval_file",)}
    return [str(job.input[n]) for n in names.get(job.kind, ()) if job.input.get(n)]


def output_model(job: JobInfo) -> str | None:
    """The store model the job's new versions go to: a fine-tune's own new model, a
    quantization's source model; None for a job that makes none."""
    if job.kind == FINE_TUNE:
        return str(job.input["output_model"])
    if job.kind == QUANTIZE:
        return str(job.input["model"])
    return None
