"""Training on real English text (issue 12): LoRA under a time budget, distillation against
cross-entropy, and the fine-tuned model served by llama.cpp against the base.

    .venv/bin/python bench/train.py [--minutes 15] [--distill-steps 30] [--tokens 128] \
        [--threads 2] [--out results.json]

On 2 busy cores a training step of 4 x 256 tokens took about a minute (LoRA ~20 tokens/s,
a student 15-20): the defaults then take about 1.5 hours. Smoke check (25 minutes on busy cores,
figures meaningless): ``--minutes 0.5 --distill-steps 5 --tokens 16``.

Everything goes through the project's training library, on the shipped SmolLM2-135M GGUF
(dequantised to float32 by ``models.load_causal_lm``) and CPython's documentation topics
(``bench/train_data.py``: split by document, 85 % train, 15 % held out, "text" examples in
windows of ``--max-seq-len`` tokens). In order:

1. the base's held-out perplexity (``evaluation.evaluate``, every held-out token);
2. the base exported as llama.cpp serves a fine-tuned model (F16 GGUF, then Q4_0);
3. two half-depth students (``models.student_from_teacher``: every other layer) trained the
   same ``--distill-steps`` steps on the same batches with the same rate, one with
   cross-entropy only, one distilled from the base (``loop.Distillation``: alpha 0.5, T 2);
4. LoRA (``lora.add_lora``, rank 8) trained for ``--minutes`` of training time: a few steps
   are timed first to plan a run whose rate schedule (warmup, linear decay) ends with the
   budget, and ``should_stop`` cuts it at the budget in any case; then merged
   (``lora.merge_lora``) and measured;
5. the merged model exported the same way (F16 GGUF, Q4_0);
6. base and fine-tuned Q4_0 served by llama.cpp (llama-cpp-python in this process, greedy,
   end of text banned so each rep makes exactly ``--tokens`` tokens): held-out perplexity from
   llama.cpp's own logits, and generation tokens/s over ``--reps`` alternating repetitions.

torch runs ``--threads`` threads (the machine's 2 cores by default) and so does llama.cpp.
Prints a markdown table and writes every figure (with the loss curves) as JSON to ``--out``
(default ``bench/results/train-<time>.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF loader draws a bar on stderr

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import train_data  # noqa: E402
from lmaas.config import DEFAULT_MODEL, SHIPPED_MODELS, find_package_file  # noqa: E402
from lmaas.training import evaluation, export, hyperparameters, lora, models  # noqa: E402
from lmaas.training.data import TokenizedExample, collate, epoch_batches  # noqa: E402
from lmaas.training.gguf_export import export_gguf_f16  # noqa: E402
from lmaas.training.loop import Distillation, RunOptions, StepMetrics, TrainingEvent, train  # noqa: E402
from lmaas.training.losses import causal_lm_loss  # noqa: E402

PROMPT = "The Python language reference describes the with statement as follows:"
TARGET_PPL_DROP = 0.15
CALIBRATION_STEPS = 2  # timed forward+backward passes (after one untimed) to plan the LoRA run
BUDGET_SHARE = 0.95  # of the budget the planned LoRA steps should fill


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=15.0, help="LoRA training time budget")
    ap.add_argument("--distill-steps", type=int, default=30, help="steps of each student run")
    ap.add_argument("--tokens", type=int, default=128, help="tokens per generation rep")
    ap.add_argument("--reps", type=int, default=5, help="generation reps per model")
    ap.add_argument("--threads", type=int, default=2, help="torch and llama.cpp threads")
    ap.add_argument("--max-seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lora-rank", type=int, default=8)
    ap.add_argument("--lora-alpha", type=int, default=16)
    ap.add_argument("--lr-multiplier", type=float, default=1.0, help="OpenAI's knob, both runs")
    ap.add_argument("--held-out", type=float, default=0.15, help="share of documents held out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = HERE / "results" / f"train-{time.strftime('%Y%m%d-%H%M%S')}.json"
    return args


def machine() -> dict[str, Any]:
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(pages / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


@contextlib.contextmanager
def timed(into: dict[str, Any], key: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        into[key] = round(time.perf_counter() - started, 2)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- PyTorch: perplexity and training --------------------------------------------------------


def held_out(model: Any, windows: Sequence[TokenizedExample], pad_id: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    with timed(result, "seconds"):
        found = evaluation.evaluate(model, windows, pad_id=pad_id)
    result.update(
        perplexity=round(found.perplexity, 4),
        loss=round(found.loss, 5),
        token_accuracy=round(found.token_accuracy, 4),
        tokens=found.tokens,
    )
    return result


def step_seconds(model: Any, windows: Sequence[TokenizedExample], batch: int, pad: int) -> float:
    """Seconds of one forward+backward pass over ``batch`` of the longest windows; the
    gradients are dropped (no update is made)."""
    longest = sorted(windows, key=lambda w: -len(w.input_ids))[:batch]
    inputs = collate(longest, pad)
    model.train()
    times = []
    for _ in range(1 + CALIBRATION_STEPS):
        started = time.perf_counter()
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        causal_lm_loss(logits.logits, inputs["labels"]).backward()
        times.append(time.perf_counter() - started)
        model.zero_grad(set_to_none=True)
    return statistics.median(times[1:])


class Recorder:
    """The run's step metrics, as (step, loss) pairs and the last event."""

    def __init__(self) -> None:
        self.losses: list[tuple[int, float]] = []
        self.last: StepMetrics | None = None

    def __call__(self, event: TrainingEvent) -> None:
        if isinstance(event, StepMetrics):
            self.losses.append((event.step, round(event.train_loss, 4)))
            self.last = event


def _tokens_trained(examples: Sequence[TokenizedExample], hp: Any, steps: int) -> int:
    """Input tokens of the first ``steps`` batches the loop drew (its own order, one epoch)."""
    lengths = [len(e.input_ids) for e in examples]
    order = epoch_batches(lengths, hp.batch_size, seed=hp.seed, epoch=0)
    return sum(lengths[i] for batch in order[:steps] for i in batch)


def run_training(
    model: Any,
    examples: Sequence[TokenizedExample],
    method: hyperparameters.Method,
    args: argparse.Namespace,
    *,
    pad_id: int,
    distillation: Distillation | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """One epoch over ``examples`` (already filled to the planned steps) through ``loop.train``."""
    hp = hyperparameters.resolve(
        len(examples),
        method,
        n_epochs=1,
        batch_size=args.batch_size,
        learning_rate_multiplier=args.lr_multiplier,
        seed=args.seed,
    )
    recorder = Recorder()
    result: dict[str, Any] = {"learning_rate": hp.learning_rate, "batch_size": hp.batch_size}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as checkpoints, timed(result, "wall_s"):
        options = RunOptions(
            checkpoint_dir=Path(checkpoints),
            keep_checkpoints=1,
            threads=args.threads,
            pad_id=pad_id,
        )
        done = train(
            model,
            examples,
            hp,
            options,
            distillation=distillation,
            on_event=recorder,
            should_stop=should_stop or (lambda: False),
        )
    last = recorder.last
    result.update(
        status=done.status,
        steps=done.step,
        planned_steps=done.total_steps,
        tokens=_tokens_trained(examples, hp, done.step),
        tokens_per_second=round(last.tokens_per_second, 1) if last else 0.0,
        final_train_loss=last.train_loss if last else None,
        losses=recorder.losses,
    )
    return result


def students(
    base: Any,
    train_windows: Sequence[TokenizedExample],
    held: Sequence[TokenizedExample],
    args: argparse.Namespace,
    pad_id: int,
) -> dict[str, Any]:
    """Two half-depth students, the same steps on the same batches: cross-entropy only, and
    distilled from ``base``."""
    examples = train_data.filled(
        train_windows, args.distill_steps * args.batch_size, seed=args.seed
    )
    out: dict[str, Any] = {"steps": args.distill_steps}
    cut = models.student_from_teacher(base)
    out["parameters"] = {
        "teacher": models.parameter_count(base),
        "student": models.parameter_count(cut),
    }
    out["as_cut"] = held_out(cut, held, pad_id)
    log(f"student as cut: held-out perplexity {out['as_cut']['perplexity']}")
    del cut
    for name, distillation in (
        ("cross_entropy", None),
        ("distilled", Distillation(teacher=base, alpha=0.5, temperature=2.0)),
    ):
        student = models.student_from_teacher(base)
        log(f"student ({name}): {args.distill_steps} steps")
        run = run_training(
            student, examples, "distillation", args, pad_id=pad_id, distillation=distillation
        )
        run["held_out"] = held_out(student, held, pad_id)
        log(f"student ({name}): held-out perplexity {run['held_out']['perplexity']}")
        out[name] = run
        del student
        gc.collect()
    out["distillation_wins"] = (
        out["distilled"]["held_out"]["perplexity"] < out["cross_entropy"]["held_out"]["perplexity"]
    )
    return out


def lora_finetune(
    base: Any, train_windows: Sequence[TokenizedExample], args: argparse.Namespace, pad_id: int
) -> tuple[Any, dict[str, Any]]:
    """LoRA for ``--minutes`` of training; returns the merged model and the run's figures."""
    settings = lora.LoraSettings(rank=args.lora_rank, alpha=args.lora_alpha)
    model = lora.add_lora(base, settings, seed=args.seed)
    budget = args.minutes * 60.0
    per_step = step_seconds(model, train_windows, args.batch_size, pad_id)
    planned = max(1, int(BUDGET_SHARE * budget / per_step))
    log(f"LoRA: {per_step:.2f} s a step measured; {planned} steps planned in {budget:.0f} s")
    examples = train_data.filled(train_windows, planned * args.batch_size, seed=args.seed)
    deadline = time.monotonic() + budget
    run = run_training(
        model,
        examples,
        "lora",
        args,
        pad_id=pad_id,
        should_stop=lambda: time.monotonic() >= deadline,
    )
    run.update(
        budget_s=budget,
        calibrated_step_s=round(per_step, 3),
        rank=settings.rank,
        alpha=settings.alpha,
        passes_over_train=round(run["steps"] * args.batch_size / len(train_windows), 2),
    )
    log(f"LoRA: {run['status']} after {run['steps']} steps, {run['tokens_per_second']} tokens/s")
    return lora.merge_lora(model), run


# -- GGUF and llama.cpp ----------------------------------------------------------------------


def export_q4_0(
    model: Any, source: Path, directory: Path, name: str, threads: int
) -> tuple[Path, dict[str, Any]]:
    figures: dict[str, Any] = {}
    f16 = directory / f"{name}-f16.gguf"
    q4 = directory / f"{name}-q4_0.gguf"
    with timed(figures, "f16_s"):
        export_gguf_f16(model, None, f16, source_gguf=source, name=f"SmolLM2-135M {name}")
    with timed(figures, "quantize_s"):
        export.quantize_gguf(f16, q4, "Q4_0", threads=threads)
    figures["q4_0_bytes"] = q4.stat().st_size
    f16.unlink()
    return q4, figures


def _quiet_llama(path: Path, threads: int, *, logits_all: bool = False, n_ctx: int = 512) -> Any:
    import llama_cpp

    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_threads=threads,
        n_threads_batch=threads,
        logits_all=logits_all,
        verbose=False,
    )


def gguf_perplexity(
    path: Path, windows: Sequence[TokenizedExample], threads: int
) -> dict[str, Any]:
    """Held-out perplexity from llama.cpp's logits: each window evaluated from an empty
    context, every token after the first scored (as ``evaluation.evaluate`` does)."""
    size = max(len(w.input_ids) for w in windows)
    llm = _quiet_llama(path, threads, logits_all=True, n_ctx=size)
    nll, count = 0.0, 0
    figures: dict[str, Any] = {}
    with timed(figures, "seconds"):
        for window in windows:
            ids = window.input_ids
            llm.reset()
            llm.eval(ids)
            scores = np.asarray(llm.scores[: len(ids) - 1], dtype=np.float64)
            top = scores.max(axis=1)
            lse = top + np.log(np.exp(scores - top[:, None]).sum(axis=1))
            nll += float((lse - scores[np.arange(len(ids) - 1), ids[1:]]).sum())
            count += len(ids) - 1
    del llm
    figures.update(perplexity=round(math.exp(nll / count), 4), tokens=count)
    return figures


def _banned_end(llm: Any) -> dict[int, float]:
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    return {t: -math.inf for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)}


def _generate(llm: Any, bans: dict[int, float], tokens: int) -> float:
    """Tokens/s of one greedy completion of exactly ``tokens`` tokens from :data:`PROMPT`."""
    llm.reset()
    started = time.perf_counter()
    done = llm.create_completion(PROMPT, max_tokens=tokens, temperature=0.0, logit_bias=bans)
    seconds = time.perf_counter() - started
    made = int(done["usage"]["completion_tokens"])
    if made != tokens:
        raise RuntimeError(f"made {made} tokens, not {tokens}")
    return made / seconds


def generation_speed(paths: dict[str, Path], args: argparse.Namespace) -> dict[str, Any]:
    """Greedy generation of exactly ``--tokens`` tokens from :data:`PROMPT`, the models taking
    turns (the first one alternating), median tokens/s over ``--reps`` per model."""
    llms = {name: _quiet_llama(path, args.threads) for name, path in paths.items()}
    bans = {name: _banned_end(llm) for name, llm in llms.items()}
    rates: dict[str, list[float]] = {name: [] for name in llms}
    for name, llm in llms.items():
        _generate(llm, bans[name], min(8, args.tokens))  # warm-up
    names = list(llms)
    for rep in range(args.reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            rates[name].append(round(_generate(llms[name], bans[name], args.tokens), 2))
    del llms
    out: dict[str, Any] = {"prompt": PROMPT, "tokens": args.tokens, "reps": args.reps}
    for name, values in rates.items():
        out[name] = {"tokens_per_second_median": statistics.median(values), "all": values}
    return out


# -- the report ------------------------------------------------------------------------------


def _pct(new: float, old: float) -> str:
    return f"{100.0 * (new - old) / old:+.1f} %"


def table(r: dict[str, Any]) -> str:
    base = r["base"]["held_out"]["perplexity"]
    tuned = r["lora"]["held_out"]["perplexity"]
    lo, st, served = r["lora"], r["students"], r["served"]
    ce, kd = (
        st["cross_entropy"]["held_out"]["perplexity"],
        st["distilled"]["held_out"]["perplexity"],
    )
    gen_b, gen_t = (
        served["generation"][k]["tokens_per_second_median"] for k in ("base", "fine_tuned")
    )
    met = "met" if tuned <= (1 - TARGET_PPL_DROP) * base else "MISSED"
    rows = [
        (
            "held-out tokens (documents)",
            f"{r['base']['held_out']['tokens']} ({r['corpus']['held_out_documents']})",
        ),
        ("base: held-out perplexity (PyTorch F32)", f"{base:.3f}"),
        (
            f"LoRA r{lo['rank']}, {lo['wall_s']:.0f} s training ({lo['steps']} steps, "
            f"{lo['passes_over_train']} passes): held-out perplexity",
            f"{tuned:.3f} ({_pct(tuned, base)}; target -15 %: {met})",
        ),
        ("LoRA training tokens/s", f"{lo['tokens_per_second']:.0f}"),
        ("half-depth student as cut: held-out perplexity", f"{st['as_cut']['perplexity']:.2f}"),
        (f"student, cross-entropy only, {st['steps']} steps", f"{ce:.3f}"),
        (
            f"student, distilled from the base, {st['steps']} steps",
            f"{kd:.3f} (distillation wins: {'yes' if st['distillation_wins'] else 'NO'})",
        ),
        (
            "student training tokens/s: cross-entropy / distilled",
            f"{st['cross_entropy']['tokens_per_second']:.0f} / "
            f"{st['distilled']['tokens_per_second']:.0f}",
        ),
        (
            "Q4_0 GGUF held-out perplexity (llama.cpp): base / fine-tuned",
            f"{served['perplexity']['base']['perplexity']:.3f} / "
            f"{served['perplexity']['fine_tuned']['perplexity']:.3f}",
        ),
        (
            f"Q4_0 generation tokens/s ({served['generation']['tokens']} tokens, median of "
            f"{served['generation']['reps']}): base / fine-tuned",
            f"{gen_b:.1f} / {gen_t:.1f} ({gen_t / gen_b:.2f}x)",
        ),
    ]
    lines = ["| measure | value |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def served(
    paths: dict[str, Path], held: Sequence[TokenizedExample], args: argparse.Namespace
) -> dict[str, Any]:
    out: dict[str, Any] = {"perplexity": {}}
    for name, path in paths.items():
        log(f"llama.cpp: held-out perplexity of {name} Q4_0")
        out["perplexity"][name] = gguf_perplexity(path, held, args.threads)
    log("llama.cpp: generation speed")
    out["generation"] = generation_speed(paths, args)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    shipped = SHIPPED_MODELS[DEFAULT_MODEL]
    source = find_package_file(shipped.package, shipped.file)
    r: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "machine": machine()}
    r["model"] = source.name
    corpus = train_data.split_documents(
        train_data.python_doc_topics(), held_out_fraction=args.held_out, seed=args.seed
    )
    r["corpus"] = corpus.describe()
    log(f"loading {source.name}")
    r["base"] = {}
    with timed(r["base"], "load_s"):
        base, tokenizer = models.load_causal_lm(source)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    train_windows = train_data.windows(corpus.train, tokenizer, args.max_seq_len)
    held = train_data.windows(corpus.held_out, tokenizer, args.max_seq_len)
    r["corpus"].update(
        train_windows=len(train_windows),
        train_tokens=sum(len(w.input_ids) for w in train_windows),
        held_out_windows=len(held),
    )
    log(f"{len(train_windows)} training windows, {len(held)} held-out windows")
    r["base"]["held_out"] = held_out(base, held, pad_id)
    log(f"base: held-out perplexity {r['base']['held_out']['perplexity']}")
    with tempfile.TemporaryDirectory(prefix="bench-train-gguf-") as tmp:
        paths = {}
        paths["base"], r["base"]["export"] = export_q4_0(
            base, source, Path(tmp), "base", args.threads
        )
        r["students"] = students(base, train_windows, held, args, pad_id)
        merged, r["lora"] = lora_finetune(base, train_windows, args, pad_id)
        r["lora"]["held_out"] = held_out(merged, held, pad_id)
        log(f"LoRA: held-out perplexity {r['lora']['held_out']['perplexity']}")
        paths["fine_tuned"], r["lora"]["export"] = export_q4_0(
            merged, source, Path(tmp), "fine-tuned", args.threads
        )
        del base, merged
        gc.collect()
        r["served"] = served(paths, held, args)
    r["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    base_ppl, tuned_ppl = r["base"]["held_out"]["perplexity"], r["lora"]["held_out"]["perplexity"]
    r["targets"] = {
        "lora_perplexity_drop": round(1 - tuned_ppl / base_ppl, 4),
        "lora_perplexity_drop_met": tuned_ppl <= (1 - TARGET_PPL_DROP) * base_ppl,
        "distillation_wins": r["students"]["distillation_wins"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(r, indent=1) + "\n")
    print(table(r))
    print(f"\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
