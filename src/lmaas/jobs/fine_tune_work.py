"""The blocking half of a fine-tuning job, run on a thread of the job runner: load the base,
tokenize the files, train (LoRA, full or distillation) with checkpoints, then export the
result (a Hugging Face folder, the adapter, an F16 GGUF quantized with llama.cpp) and put it
in the store. The store's files come through :class:`lmaas.jobs.storage.JobFiles` (the store's
disk beside the gateway, or the gateway from a Ray node); versions and aliases are read and set
in the catalog. Heavy imports (torch, transformers, peft) happen here, not at import time.

Progress goes to the job through ``report`` callables (events and step counts); a cancel is
seen before each step. A run started again over the same work directory goes on from its
newest checkpoint. Through the gateway (a Ray node) each checkpoint is also kept there as it is
written (synchronously: training waits for the upload, once per ``checkpoint_every_steps``), and
a run whose work directory has no newer one fetches it back first: a job resumed on another
node after its node died goes on from there, not from step 0.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from lmaas.jobs.model_jobs import fine_tune_note
from lmaas.jobs.storage import CheckpointRefused, JobFiles
from lmaas.store.catalog import Catalog, VersionInfo

log = logging.getLogger(__name__)


@dataclass
class Reports:
    """How the work tells the job what happens (each callable blocks briefly: SQL)."""

    event: Callable[[str, str, dict[str, Any] | None], None]
    progress: Callable[[int, int], None]
    should_stop: Callable[[], bool]


@dataclass
class WorkResult:
    status: str  # succeeded, cancelled
    message: str
    result: dict[str, Any] = field(default_factory=dict)


def _lines(files: JobFiles, file_id: str) -> Iterator[bytes]:
    with files.open_input(file_id) as handle:
        yield from handle


class FineTuneWork:
    def __init__(
        self, catalog: Catalog, files: JobFiles, workdir: Path, given: dict[str, Any]
    ) -> None:
        self.catalog = catalog
        self.files = files
        self.workdir = workdir
        self.given = given
        self._keeping = True  # send checkpoints to be kept (off after one was too large)

    # -- the parts ------------------------------------------------------------------------------

    def _version(self, ref: dict[str, Any]) -> VersionInfo:
        return self.catalog.get_version(str(ref["model"]), int(ref["number"]))

    def _load(self, ref: dict[str, Any]) -> tuple[Any, Any, Path, VersionInfo]:
        from lmaas.training.models import load_causal_lm

        version = self._version(ref)
        path = self.files.model_path(version, job_id=str(self.given["job_id"]))
        model, tokenizer = load_causal_lm(path)
        return model, tokenizer, path, version

    def _examples(self, file_id: str | None, tokenizer: Any) -> Any:
        from lmaas.training.data import tokenize_examples
        from lmaas.training.formats import read_examples

        if file_id is None:
            return None
        examples = read_examples(_lines(self.files, file_id))
        return tokenize_examples(examples, tokenizer, int(self.given["max_seq_len"])).examples

    def _eval_file(self, tokenizer: Any) -> str | None:
        """The held-out set as an ``evals`` file (see :mod:`lmaas.jobs.fine_tune_evals`)."""
        from lmaas.jobs.fine_tune_evals import eval_lines
        from lmaas.training.formats import read_examples

        file_id = self.given.get("validation_file")
        if file_id is None:
            return None
        lines = list(eval_lines(read_examples(_lines(self.files, file_id)), tokenizer))
        if not lines:
            return None
        return self.files.add_output(
            [b"".join(lines)],
            purpose="evals",
            job_id=str(self.given["job_id"]),
            filename=f"{self.given['job_id']}_held_out.jsonl",
            owner_key_id=self.given.get("owner_key_id"),
        )

    def _student(self, teacher: Any, tokenizer: Any) -> Any:
        from lmaas.training.models import check_distillation_pair, student_from_teacher

        settings = self.given["method_settings"]
        if settings.get("student_ref") is None:
            return student_from_teacher(teacher)
        student, student_tokenizer, _, _ = self._load(settings["student_ref"])
        check_distillation_pair(teacher, tokenizer, student, student_tokenizer)
        return student

    # -- the run --------------------------------------------------------------------------------

    def run(self, reports: Reports) -> WorkResult:
        import torch

        from lmaas.training.hyperparameters import Hyperparameters
        from lmaas.training.loop import RunOptions, train
        from lmaas.training.lora import merge_lora

        torch.manual_seed(int(self.given["seed"]))
        method = str(self.given["method"])
        base, tokenizer, base_path, base_version = self._load(self.given["base"])
        train_set = self._examples(self.given["training_file"], tokenizer)
        valid_set = self._examples(self.given.get("validation_file"), tokenizer)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        base_ppl = self._perplexity(base, valid_set, pad_id)
        model, distillation = self._trainee(method, base, tokenizer)
        hp = self.given["hyperparameters"]
        hyper = Hyperparameters(
            n_epochs=int(hp["n_epochs"]),
            batch_size=int(hp["batch_size"]),
            learning_rate=float(hp["learning_rate"]),
            seed=int(self.given["seed"]),
        )
        reports.event("info", f"training {method}: {len(train_set)} examples, {hyper}", None)
        self._resume_point(reports)
        ran = train(
            model,
            train_set,
            hyper,
            RunOptions(
                checkpoint_dir=self.workdir / "checkpoints",
                checkpoint_every=self.given.get("checkpoint_every_steps"),
                pad_id=pad_id,
                threads=1,
            ),
            valid_set=valid_set,
            distillation=distillation,
            on_event=partial(self._on_event, reports),
            should_stop=reports.should_stop,
        )
        if ran.status == "cancelled":
            return WorkResult("cancelled", f"cancelled at step {ran.step} of {ran.total_steps}")
        adapter_dir = None
        if method == "lora":
            from lmaas.training.export import save_adapter

            adapter_dir = save_adapter(model, self.workdir / "adapter")
            model = merge_lora(model)
        tuned_ppl = self._perplexity(model, valid_set, pad_id)
        result = self._export(model, tokenizer, base_path, base_version, adapter_dir)
        result["trained_tokens"] = sum(len(e.input_ids) for e in train_set) * hyper.n_epochs
        result["held_out"] = {"base_perplexity": base_ppl, "perplexity": tuned_ppl}
        result["eval_file_id"] = self._eval_file(tokenizer)
        result["steps"] = ran.step
        result["metrics"] = ran.metrics
        return WorkResult("succeeded", f"trained {ran.step} steps", result)

    def _on_event(self, reports: Reports, event: Any) -> None:
        """A training event as the job's events and progress."""
        from lmaas.training.loop import CheckpointSaved

        if isinstance(event, CheckpointSaved):
            point = event.checkpoint
            kept = " (kept by the gateway)" if self._keep(point, reports) else ""
            data = {"checkpoint": True, "step": point.step, **point.metrics}
            reports.event("info", f"checkpoint at step {point.step}{kept}", data)
            return
        data = {
            "step": event.step,
            "total_steps": event.total_steps,
            "train_loss": event.train_loss,
            "train_mean_token_accuracy": event.train_mean_token_accuracy,
            "valid_loss": event.valid_loss,
            "valid_mean_token_accuracy": event.valid_mean_token_accuracy,
            "learning_rate": event.learning_rate,
            "tokens_per_second": event.tokens_per_second,
        }
        reports.event(
            "info", f"step {event.step}/{event.total_steps}: loss {event.train_loss:.4f}", data
        )
        reports.progress(event.step, event.total_steps)

    def _keep(self, point: Any, reports: Reports) -> bool:
        """Send a checkpoint just written to be kept through the files seam (not one written as
        the run stops: a cancel, or a lost lease); whether it was kept elsewhere. A refusal is a
        warning, not the run's end; after a 413 none is sent again."""
        if not self._keeping or reports.should_stop():
            return False
        try:
            return self.files.keep_checkpoint(str(self.given["job_id"]), point.path)
        except CheckpointRefused as exc:
            more = ""
            if exc.status == 413:
                self._keeping, more = False, "; none is sent again"
            reports.event(
                "warning", f"the checkpoint of step {point.step} was not kept ({exc}){more}", None
            )
            return False

    def _resume_point(self, reports: Reports) -> None:
        """Go on from the newest checkpoint: this work directory's, or the one kept through the
        files seam when that one is newer (fetched here first); an event says from which."""
        from lmaas.training.checkpoints import latest

        directory = self.workdir / "checkpoints"
        found = latest(directory)
        try:
            fetched = self.files.fetch_checkpoint(
                str(self.given["job_id"]), directory, after=None if found is None else found.step
            )
        except CheckpointRefused as exc:
            fetched = None
            reports.event("warning", f"the kept checkpoint was not fetched ({exc})", None)
        if fetched is not None:
            found = latest(directory)
            if found is not None:
                reports.event("info", f"fetched the checkpoint of step {found.step}", None)
        if found is not None:
            reports.event(
                "info",
                f"resuming from the checkpoint of step {found.step}",
                {"resumed_from_step": found.step},
            )

    def _trainee(self, method: str, base: Any, tokenizer: Any) -> tuple[Any, Any]:
        """(the model to train, the distillation settings or None)."""
        from lmaas.training.loop import Distillation
        from lmaas.training.lora import LoraSettings, add_lora

        settings = self.given["method_settings"]
        if method == "distillation":
            student = self._student(base, tokenizer)
            teach = Distillation(
                teacher=base,
                alpha=float(settings["alpha"]),
                temperature=float(settings["temperature"]),
            )
            return student, teach
        if method != "lora":
            return base, None
        lora = settings.get("lora") or {}
        targets = lora.get("target_modules")
        model = add_lora(
            base,
            LoraSettings(
                rank=int(lora.get("r", 8)),
                alpha=int(lora.get("alpha", 16)),
                dropout=float(lora.get("dropout", 0.05)),
                target_modules=tuple(targets) if targets else None,
            ),
            seed=int(self.given["seed"]),
        )
        return model, None

    @staticmethod
    def _perplexity(model: Any, valid_set: Any, pad_id: int) -> float | None:
        if not valid_set:
            return None
        from lmaas.training.evaluation import perplexity

        return float(perplexity(model, valid_set, pad_id=pad_id))

    def _export(
        self,
        model: Any,
        tokenizer: Any,
        base_path: Path,
        base_version: VersionInfo,
        adapter_dir: Path | None,
    ) -> dict[str, Any]:
        from lmaas.training.export import quantize_gguf, save_hf_folder
        from lmaas.training.gguf_export import export_gguf_f16

        name = str(self.given["output_model"])
        folder = save_hf_folder(model, tokenizer, self.workdir / "hf")
        if adapter_dir is not None:
            shutil.copytree(adapter_dir, folder / "adapter", dirs_exist_ok=True)
        f16 = self.workdir / "model-f16.gguf"
        source = base_path if base_version.format == "gguf" else None
        export_gguf_f16(model, None if source else tokenizer, f16, source_gguf=source, name=name)
        qtype = str(self.given["quantization"])
        gguf = f16
        if qtype != "F16":
            gguf = self.workdir / f"model-{qtype}.gguf"
            quantize_gguf(f16, gguf, qtype)
        job_id = str(self.given["job_id"])
        source_note = fine_tune_note(job_id, base_version.model, base_version.number)
        hf_version = self.files.store_version(job_id, name, folder, source=source_note)
        gguf_version = self.files.store_version(job_id, name, gguf, source=source_note)
        self.catalog.set_alias(name, "hf", hf_version.number)
        self.catalog.set_alias(name, "gguf", gguf_version.number)
        return {
            "model": name,
            "hf_version": hf_version.number,
            "gguf_version": gguf_version.number,
            "quantization": qtype,
        }
