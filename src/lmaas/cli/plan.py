"""`lmaas profile` measures one replica of a deployment and keeps the profile with its model
version; `lmaas plan` asks the server how many replicas a load needs (``GET /admin/plan``)."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.status import Status
from rich.table import Table

from lmaas.cli.http import (
    DEFAULT_URL,
    AdminClient,
    KeyOpt,
    UrlOpt,
    admin_path,
    check_served_name,
    console,
    fail,
    local_key,
    size_text,
)
from lmaas.cli.profiling import Calibration, Prefill

BATCHES = [1, 2, 4, 8, 16]


def profile(
    name: Annotated[str, typer.Argument(help="A deployment, measured through the API")],
    batches: Annotated[
        str, typer.Option(help="Batch sizes to measure decode at, comma-separated")
    ] = ",".join(map(str, BATCHES)),
    tokens: Annotated[int, typer.Option(min=4, max=4096, help="Tokens each stream makes")] = 48,
    prompt_words: Annotated[
        int, typer.Option(min=32, max=100_000, help="The longest prompt's words (prefill)")
    ] = 512,
    reps: Annotated[int, typer.Option(min=1, max=50, help="Prefill repetitions")] = 3,
    mixed_requests: Annotated[
        int | None,
        typer.Option(
            min=0, max=10_000, help="Requests of the saturated mixed run (0: none) [4 x batch]"
        ),
    ] = None,
    max_num_seqs: Annotated[
        int, typer.Option(min=1, max=4096, help="The deployment's engine.max_num_seqs")
    ] = 32,
    other_threads: Annotated[
        str,
        typer.Option(
            help="Measure prefill and decode again with these thread counts too, comma-"
            "separated ('' for none), each in a temporary deployment of the same version: "
            "how each phase scales with threads"
        ),
    ] = "1",
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
) -> None:
    """Measure one replica of deployment NAME (prefill and decode rates by batch size, the
    per-request overhead, its memory; prefill and decode again with --other-threads) and keep
    the profile with the model version it serves: the capacity planner (`lmaas plan`)
    predicts from it."""
    check_served_name(name)
    try:
        sizes = sorted({int(b) for b in batches.split(",") if b.strip()})
    except ValueError:
        fail("--batches takes whole numbers separated by commas, e.g. 1,2,4,8")
    if not sizes or min(sizes) < 1 or max(sizes) > max_num_seqs:
        fail(f"batch sizes go from 1 to --max-num-seqs ({max_num_seqs})")
    try:
        counts = sorted({int(t) for t in other_threads.split(",") if t.strip()})
    except ValueError:
        fail("--other-threads takes whole numbers separated by commas, e.g. 1")
    if any(not 1 <= t <= 4096 for t in counts) or len(counts) > 8:
        fail("--other-threads takes up to 8 thread counts of 1-4096")
    how = Measure(sizes, tokens, prompt_words, reps, max_num_seqs)
    with AdminClient(url, key) as c:
        d = c.get(admin_path("deployments", name))
        pool = c.get("/admin/deployments").get("pool")
        if d["model"] is None or d["version"] is None:
            fail(f"{name} serves a file, not a store version: there is nowhere to keep a profile")
        if d["ready_replicas"] != 1 or d["replicas"] != 1:
            fail(f"a profile measures one replica; {name} has {d['replicas']}: scale it to 1")
        resources = d.get("resources") or {}
        threads = resources.get("cpu_threads") or 1
        mixed = 4 * max(sizes) if mixed_requests is None else mixed_requests
        body = _measure(c.url, name, key, how, mixed)
        body["at_threads"] = {
            t: _measure_at(c, key, f"{d['model']}:{d['version']}", t, how)
            for t in counts
            if t != threads
        }
        body |= {
            "threads": threads,
            "cores": pool["cores"] if pool else resources.get("cpu_threads") or 1,
            "memory_bytes": (resources.get("memory_bytes") or 0)
            + (resources.get("shared_memory_bytes") or 0),
            "max_num_seqs": max_num_seqs,
            "measured_at": datetime.now(UTC).isoformat(),
        }
        kept = c.put(
            admin_path("models", d["model"], "versions", str(d["version"]), "profile"), json=body
        )
    _show_profile(f"{d['model']}:{d['version']}", kept)


@dataclass(frozen=True, slots=True)
class Measure:
    """What the calibration measures: decode at ``sizes`` streams of ``tokens`` tokens each,
    prefill of prompts up to ``prompt_words`` words ``reps`` times each."""

    sizes: list[int]
    tokens: int
    prompt_words: int
    reps: int
    max_num_seqs: int


def _calibration(url: str, name: str, key: str | None) -> Calibration:
    key = key or local_key(url)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return Calibration(url, name, headers, timeout=600)


def _prefill_and_decode(
    calibration: Calibration, how: Measure, status: Status, tag: str = ""
) -> tuple[Prefill, dict[int, float]]:
    status.update(f"prefill{tag}: short and long prompts, uncached")
    words = how.prompt_words
    lengths = sorted({16, *(w for w in (64, 128, 256) if w < words), words})
    prefill = calibration.prefill(lengths, how.reps)
    rates: dict[int, float] = {}

    def done(b: int, rate: float) -> None:
        console.print(f"decode{tag} at batch {b}: {rate:.1f} tokens/s")
        status.update(f"decode{tag}: {len(rates) + 1}/{len(how.sizes)} batch sizes")

    status.update(f"decode{tag}: 0/{len(how.sizes)} batch sizes")
    rates.update(calibration.decode_rates(how.sizes, how.tokens, done))
    return prefill, rates


def _measure_at(c: AdminClient, key: str | None, version: str, threads: int, how: Measure) -> Any:
    """Prefill times and decode rates of a temporary deployment of ``version`` with
    ``threads`` threads (deleted afterwards)."""
    name = f"lmaas-profile-{secrets.token_hex(4)}-threads-{threads}"
    engine = {"threads": threads, "max_num_seqs": how.max_num_seqs, "prefix_cache": False}
    with console.status(f"starting a replica of {threads} thread(s)") as status:
        c.post(
            "/admin/deployments",
            json={"model": version, "name": name, "engine": engine, "wait": True},
            timeout=900,
        )
        calibration = _calibration(c.url, name, key)
        try:
            prefill, rates = _prefill_and_decode(calibration, how, status, f" ({threads} t)")
        except Exception as exc:  # a failed request or a replica too noisy to measure
            fail(f"the calibration at {threads} thread(s) failed: {exc}")
        finally:
            calibration.close()
            c.delete(admin_path("deployments", name))
    return {"prefill_seconds": prefill.seconds, "decode_tokens_per_s": rates}


def _measure(url: str, name: str, key: str | None, how: Measure, mixed: int) -> dict[str, Any]:
    calibration = _calibration(url, name, key)
    try:
        with console.status("prefill: short and long prompts, uncached") as status:
            prefill, rates = _prefill_and_decode(calibration, how, status)
            out: dict[str, Any] = {}
            if mixed:
                sizes, tokens = how.sizes, how.tokens
                status.update(f"a saturated mix: {mixed} requests from {max(sizes)} clients")
                words = calibration.decode_prompt_words
                # the fastest of two runs: other work on the machine only ever slows one
                runs = [calibration.mixed(max(sizes), words, tokens, mixed) for _ in range(2)]
                n, seconds = min(runs, key=lambda run: run[1])
                console.print(f"mixed: {seconds:.3f} s of engine time per request")
                out = {
                    "mixed_prompt_tokens": n,
                    "mixed_output_tokens": tokens,
                    "mixed_streams": max(sizes),
                    "mixed_seconds": seconds,
                }
    except Exception as exc:  # a failed request or a replica too noisy to measure
        fail(f"the calibration failed: {exc}")
    finally:
        calibration.close()
    return out | {
        "prefill_tokens_per_s": prefill.tokens_per_s,
        "overhead_s": prefill.overhead_s,
        "prefill_seconds": prefill.seconds,
        "decode_tokens_per_s": rates,
    }


def _show_profile(version: str, p: dict[str, Any]) -> None:
    console.print(
        f"{version}: prefill {p['prefill_tokens_per_s']:.0f} tokens/s, "
        f"overhead {p['overhead_s'] * 1000:.0f} ms/request, {p['threads']} threads "
        f"({p['cores']} cores), {size_text(p['memory_bytes'])} per replica"
    )
    others = sorted((int(t), r) for t, r in (p.get("at_threads") or {}).items())
    table = Table("batch", "decode tokens/s", "per stream", *(f"at {t} threads" for t, _ in others))
    for b, rate in sorted((int(b), r) for b, r in p["decode_tokens_per_s"].items()):
        at = [
            r["decode_tokens_per_s"].get(str(b), r["decode_tokens_per_s"].get(b)) for _, r in others
        ]
        cells = [f"{x:.1f}" if x is not None else "" for x in at]
        table.add_row(str(b), f"{rate:.1f}", f"{rate / b:.1f}", *cells)
    console.print(table)


def plan(
    model: Annotated[str, typer.Option(help="A deployment, or a store version (name:ref)")],
    rps: Annotated[float, typer.Option(help="Requests per second to serve")],
    prompt_tokens: Annotated[int, typer.Option(help="Prompt tokens per request")],
    output_tokens: Annotated[int, typer.Option(help="Output tokens per request")],
    ttft_p99: Annotated[float | None, typer.Option(help="Time to first token, p99 (s)")] = None,
    latency_p99: Annotated[float | None, typer.Option(help="Whole request, p99 (s)")] = None,
    utilisation: Annotated[
        float, typer.Option(help="The most each replica may be busy (room for bursts)")
    ] = 0.8,
    cores: Annotated[int | None, typer.Option(help="Cores per machine [this cluster's]")] = None,
    memory_gb: Annotated[
        float | None, typer.Option(help="GiB per machine [this cluster's]")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON")] = False,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
) -> None:
    """How many replicas, cores and how much memory a load needs, with the throughput, TTFT
    and utilisation to expect, from the model's profile (measure one with `lmaas profile`)."""
    params: dict[str, Any] = {
        "model": model,
        "rps": rps,
        "prompt_tokens": prompt_tokens,
        "output_tokens": output_tokens,
        "utilisation": utilisation,
    }
    for k, v in (("ttft_p99", ttft_p99), ("latency_p99", latency_p99), ("cores", cores)):
        if v is not None:
            params[k] = v
    if memory_gb is not None:
        params["memory_gb"] = memory_gb
    with AdminClient(url, key) as c:
        out = c.get("/admin/plan", params=params)
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    _show_plan(out)


def _seconds(value: float | None) -> str:
    """A time of the plan (JSON null: unbounded, as for a saturated candidate)."""
    return "unbounded" if value is None else f"{value:.2f} s"


def _show_plan(out: dict[str, Any]) -> None:
    table = Table(
        "replicas",
        "threads",
        "utilisation",
        "max req/s",
        "TTFT p50",
        "TTFT p99",
        "latency p50",
        "streams",
    )
    for c in out["candidates"]:
        table.add_row(
            str(c["replicas"]),
            str(c["threads"]),
            "saturated" if c["saturated"] else f"{c['utilisation']:.0%}",
            f"{c['max_requests_per_s']:.2f}",
            _seconds(c["ttft_p50_s"]),
            _seconds(c["ttft_p99_s"]),
            _seconds(c["latency_p50_s"]),
            f"{c['concurrency']:.1f}",
        )
    console.print(table)
    machine = out["machine"]
    where = f"machine(s) of {machine['cores']} cores, {size_text(machine['memory_bytes'])} each"
    if not out["feasible"]:
        console.print(f"[red]not feasible[/red]: {out['reason']}")
        raise typer.Exit(1)
    e = out["expected"]
    console.print(
        f"[bold]{out['replicas']} replica(s)[/bold] of {out['threads_per_replica']} threads on "
        f"{out['nodes']} {where}: {out['cores']} cores, {size_text(out['memory_bytes'])}; "
        f"{e['requests_per_s']:.2f} req/s ({e['output_tokens_per_s']:.0f} output tokens/s), "
        f"TTFT p50 {e['ttft_p50_s']:.2f} s / p99 {e['ttft_p99_s']:.2f} s, "
        f"{e['utilisation']:.0%} busy"
    )
