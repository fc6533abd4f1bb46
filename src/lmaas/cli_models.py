"""`lmaas models ...`: the model store of a running server, over its admin API."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

models_app = typer.Typer(help="Manage models in a running server's store", no_args_is_help=True)
console = Console()

UrlOpt = Annotated[str, typer.Option("--url", envvar="LMAAS_URL", help="Server URL")]
KeyOpt = Annotated[str | None, typer.Option("--key", envvar="LMAAS_API_KEY", help="Admin API key")]
_CHUNK = 1 << 20


def _client(url: str, key: str | None, timeout: float = 60.0) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)


def _check(r: httpx.Response) -> Any:
    if r.status_code >= 400:
        try:
            message = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = r.text[:500]
        console.print(f"[red]error {r.status_code}:[/red] {message}")
        raise typer.Exit(1)
    return (
        r.json()
        if r.content and r.headers.get("content-type", "").startswith("application/json")
        else None
    )


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


@models_app.command("ls")
def list_models(url: UrlOpt = "http://127.0.0.1:8000", key: KeyOpt = None) -> None:
    """List models with their latest version and aliases."""
    with _client(url, key) as c:
        data = _check(c.get("/admin/models"))["data"]
    table = Table("name", "latest", "aliases", "description")
    for m in data:
        aliases = ", ".join(f"{a}→{n}" for a, n in sorted(m["aliases"].items()))
        table.add_row(m["name"], str(m["latest"] or "-"), aliases, m["description"][:60])
    console.print(table)


@models_app.command("show")
def show(name: str, url: UrlOpt = "http://127.0.0.1:8000", key: KeyOpt = None) -> None:
    """Show a model and all its versions."""
    with _client(url, key) as c:
        m = _check(c.get(f"/admin/models/{name}"))
    table = Table(
        "version", "format", "arch", "params", "ctx", "quant", "size", "aliases", "created"
    )
    for v in m["versions"]:
        params = f"{v['parameter_count'] / 1e6:.0f}M" if v["parameter_count"] else "-"
        table.add_row(
            str(v["number"]),
            v["format"],
            v["architecture"] or "-",
            params,
            str(v["context_length"] or "-"),
            v["quantization"] or "-",
            _size(v["size_bytes"]),
            ", ".join(v["aliases"]),
            v["created_at"][:19],
        )
    console.print(f"[bold]{m['name']}[/bold] {m['description']}")
    console.print(table)


def _progress() -> Progress:
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


@models_app.command("push")
def push(
    name: str,
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    description: Annotated[str, typer.Option(help="Version description")] = "",
    url: UrlOpt = "http://127.0.0.1:8000",
    key: KeyOpt = None,
) -> None:
    """Upload a GGUF file as a new version of NAME (created if needed), with a progress bar."""
    total = file.stat().st_size

    with _progress() as progress:
        task = progress.add_task(f"push {file.name}", total=total)

        def body() -> Any:
            with file.open("rb") as f:
                while chunk := f.read(_CHUNK):
                    progress.advance(task, len(chunk))
                    yield chunk

        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(total)}
        if description:
            headers["X-Description"] = description
        with _client(url, key, timeout=3600) as c:
            v = _check(c.post(f"/admin/models/{name}/versions", content=body(), headers=headers))
    console.print(
        f"{v['model']} version {v['number']} ({v['digest'][:19]}…), "
        f"{v['architecture']}, {v['quantization']}, {_size(v['size_bytes'])}"
    )


@models_app.command("pull")
def pull(
    reference: Annotated[str, typer.Argument(help="NAME, NAME:VERSION or NAME:ALIAS")],
    output: Annotated[Path | None, typer.Option("-o", "--output")] = None,
    url: UrlOpt = "http://127.0.0.1:8000",
    key: KeyOpt = None,
) -> None:
    """Download a version; resumes a partial file with an HTTP Range request."""
    name, _, ref = reference.partition(":")
    ref = ref or "latest"
    with _client(url, key, timeout=3600) as c:
        v = _check(c.get(f"/admin/models/{name}/versions/{ref}"))
        target = output or Path(f"{v['model']}-v{v['number']}.gguf")
        have = target.stat().st_size if target.exists() else 0
        if have >= v["size_bytes"]:
            have = 0  # complete or foreign file: start over
        headers = {"Range": f"bytes={have}-"} if have else {}
        with (
            _progress() as progress,
            c.stream(
                "GET", f"/admin/models/{name}/versions/{v['number']}/content", headers=headers
            ) as r,
        ):
            if r.status_code >= 400:
                r.read()
                _check(r)
            mode = "ab" if r.status_code == 206 else "wb"
            task = progress.add_task(
                f"pull {target.name}",
                total=v["size_bytes"],
                completed=have if mode == "ab" else 0,
            )
            with target.open(mode) as f:
                for chunk in r.iter_bytes(_CHUNK):
                    f.write(chunk)
                    progress.advance(task, len(chunk))
    console.print(f"saved {target} ({_size(target.stat().st_size)})")


@models_app.command("rm")
def remove(
    reference: Annotated[str, typer.Argument(help="NAME (all versions) or NAME:VERSION")],
    url: UrlOpt = "http://127.0.0.1:8000",
    key: KeyOpt = None,
) -> None:
    """Delete a model or one version (refused while it is being served)."""
    name, _, number = reference.partition(":")
    path = f"/admin/models/{name}" + (f"/versions/{number}" if number else "")
    with _client(url, key) as c:
        _check(c.delete(path))
    console.print(f"deleted {reference}")


@models_app.command("alias")
def alias(
    name: str,
    alias_name: Annotated[str, typer.Argument(metavar="ALIAS")],
    version: Annotated[
        str | None, typer.Argument(help="version number; omit with --delete")
    ] = None,
    delete: Annotated[bool, typer.Option("--delete", help="Remove the alias")] = False,
    url: UrlOpt = "http://127.0.0.1:8000",
    key: KeyOpt = None,
) -> None:
    """Point ALIAS of NAME at a version, or remove it."""
    with _client(url, key) as c:
        if delete:
            _check(c.delete(f"/admin/models/{name}/aliases/{alias_name}"))
            console.print(f"removed {name}:{alias_name}")
            return
        if version is None:
            console.print("[red]give a version number (or --delete)[/red]")
            raise typer.Exit(2)
        v = _check(
            c.put(
                f"/admin/models/{name}/aliases/{alias_name}",
                json={"version": int(version) if version.isdigit() else version},
            )
        )
    console.print(f"{name}:{alias_name} → version {v['number']}")


tasks_app = typer.Typer(help="Query the record of inference requests", no_args_is_help=True)


@tasks_app.command("ls")
def list_tasks(
    model: Annotated[str | None, typer.Option(help="Only this model")] = None,
    status: Annotated[str | None, typer.Option(help="ok | error | cancelled")] = None,
    since: Annotated[str | None, typer.Option(help="ISO time, e.g. 2026-11-22T08:00:00Z")] = None,
    key_id: Annotated[str | None, typer.Option("--key-id", help="Only this API key id")] = None,
    limit: Annotated[int, typer.Option(help="Rows")] = 50,
    url: UrlOpt = "http://127.0.0.1:8000",
    key: KeyOpt = None,
) -> None:
    """The newest task records, one row each."""
    params = {"model": model, "status": status, "since": since, "key": key_id, "limit": limit}
    with _client(url, key) as c:
        page = _check(c.get("/admin/tasks", params={k: v for k, v in params.items() if v}))
    table = Table(
        "received",
        "request id",
        "type",
        "model",
        "status",
        "http",
        "in",
        "out",
        "ttft ms",
        "latency ms",
        "key",
        "error",
    )
    for t in page["data"]:
        table.add_row(
            str(t["received_at"])[:19],
            t["request_id"][:16],
            t["task_type"],
            t["model"] or "-",
            t["status"],
            str(t["http_status"]),
            str(t["prompt_tokens"]),
            str(t["completion_tokens"]),
            f"{t['ttft_ms']:.0f}" if t["ttft_ms"] else "-",
            f"{t['latency_ms']:.0f}",
            t["api_key_id"] or "-",
            (t["error"] or "")[:40],
        )
    console.print(table)
