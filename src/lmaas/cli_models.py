"""`lmaas models ...`: the model store of a running server, over its admin API."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, BinaryIO

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

from lmaas.errors import LmaasError
from lmaas.store.folder import (
    extract_tar,
    is_pickle_name,
    manifest_bytes,
    member_path,
    tar_chunks,
    tar_length,
)

models_app = typer.Typer(help="Manage models in a running server's store", no_args_is_help=True)
# Piped output (scripts, tests) gets wide lines instead of cells cut to fit 80 columns.
console = Console(width=None if sys.stdout.isatty() else 200)

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


_ARCHIVE_TYPES = {
    ".tar": "application/x-tar",
    ".tgz": "application/gzip",
    ".zip": "application/zip",
}
_SKIPPED_TOP_DIRS = {".git", ".cache"}

FolderEntry = tuple[str, int, Callable[[], BinaryIO]]


def _folder_entries(root: Path) -> list[FolderEntry]:
    """The files under ``root`` as (path in the folder, size, opener), checked the way the
    server checks them so a bad folder fails before anything is sent."""
    entries: list[FolderEntry] = []
    for directory, dirs, files in os.walk(root):
        relative = Path(directory).relative_to(root)
        if relative == Path("."):
            dirs[:] = [d for d in dirs if d not in _SKIPPED_TOP_DIRS]
        for d in dirs:
            if (Path(directory) / d).is_symlink():
                raise typer.BadParameter(f"{Path(directory) / d} links to a directory")
        dirs.sort()
        for name in sorted(files):
            file = Path(directory) / name
            path = member_path((relative / name).as_posix())
            if is_pickle_name(path):
                raise typer.BadParameter(
                    f"{path}: pickle-based weights are refused; convert them to safetensors"
                )
            if not file.is_file():
                raise typer.BadParameter(f"{file} is not a regular file")
            entries.append((path, file.stat().st_size, _opener(file)))
    return entries


def _opener(file: Path) -> Callable[[], BinaryIO]:
    return lambda: file.open("rb")


def _upload_source(path: Path) -> tuple[int, Iterator[bytes], str]:
    """(length, bytes, Content-Type) of what `push` sends for ``path``."""
    if path.is_dir():
        entries = _folder_entries(path)
        length = tar_length((p, size) for p, size, _ in entries)
        return length, tar_chunks(entries), "application/x-tar"
    name = path.name.lower()
    suffix = ".tgz" if name.endswith(".tar.gz") else path.suffix.lower()

    def chunks() -> Iterator[bytes]:
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                yield chunk

    ctype = _ARCHIVE_TYPES.get(suffix, "application/octet-stream")
    return path.stat().st_size, chunks(), ctype


@models_app.command("push")
def push(
    name: str,
    path: Annotated[
        Path,
        typer.Argument(
            exists=True,
            readable=True,
            help="A GGUF file, a Hugging Face folder, or a .tar, .tar.gz or .zip of one",
        ),
    ],
    description: Annotated[str, typer.Option(help="Version description")] = "",
    url: UrlOpt = "http://127.0.0.1:8000",
    key: KeyOpt = None,
) -> None:
    """Upload a new version of NAME (created if needed), with a progress bar. A directory is
    sent as a tar generated on the fly (no temporary file)."""
    try:
        total, chunks, ctype = _upload_source(path)
    except LmaasError as exc:
        console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from exc

    with _progress() as progress:
        task = progress.add_task(f"push {path.name}", total=total)

        def body() -> Iterator[bytes]:
            for chunk in chunks:
                progress.advance(task, len(chunk))
                yield chunk

        headers = {"Content-Type": ctype, "Content-Length": str(total)}
        if description:
            headers["X-Description"] = description
        with _client(url, key, timeout=3600) as c:
            v = _check(c.post(f"/admin/models/{name}/versions", content=body(), headers=headers))
    console.print(
        f"{v['model']} version {v['number']} ({v['digest'][:19]}…), {v['format']}, "
        f"{v['architecture']}, {v['quantization']}, {_size(v['size_bytes'])}"
    )


@models_app.command("pull")
def pull(
    reference: Annotated[str, typer.Argument(help="NAME, NAME:VERSION or NAME:ALIAS")],
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            help="GGUF: the file. Hugging Face folder: a directory to create, or a .tar file",
        ),
    ] = None,
    url: UrlOpt = "http://127.0.0.1:8000",
    key: KeyOpt = None,
) -> None:
    """Download a version. A GGUF file resumes a partial download with an HTTP Range request;
    a Hugging Face folder is written as a directory (or kept as a tar with -o NAME.tar)."""
    name, _, ref = reference.partition(":")
    ref = ref or "latest"
    with _client(url, key, timeout=3600) as c:
        v = _check(c.get(f"/admin/models/{name}/versions/{ref}"))
        if v["format"] == "hf":
            target = output or Path(f"{v['model']}-v{v['number']}")
            _pull_folder(c, v, target)
            return
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


class _ChunkReader:
    """``read(n)`` over an iterator of byte chunks (for the tar reader)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = bytearray()

    def read(self, size: int = -1, /) -> bytes:
        while size < 0 or len(self._buffer) < size:
            chunk = next(self._chunks, b"")
            if not chunk:
                break
            self._buffer += chunk
        if size < 0:
            size = len(self._buffer)
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data


def _pull_folder(c: httpx.Client, v: dict[str, Any], target: Path) -> None:
    """Write a Hugging Face version to ``target``: a .tar file as sent, else a new directory,
    extracted into a temporary sibling and renamed into place once its manifest checks out."""
    as_tar = target.suffix.lower() == ".tar"
    if not as_tar and target.exists() and (not target.is_dir() or any(target.iterdir())):
        console.print(f"[red]error:[/red] {target} exists and is not an empty directory")
        raise typer.Exit(1)
    path = f"/admin/models/{v['model']}/versions/{v['number']}/content"
    with _progress() as progress, c.stream("GET", path) as r:
        if r.status_code >= 400:
            r.read()
            _check(r)
        task = progress.add_task(f"pull {target.name}", total=int(r.headers["content-length"]))

        def chunks() -> Iterator[bytes]:
            for chunk in r.iter_bytes(_CHUNK):
                progress.advance(task, len(chunk))
                yield chunk

        if as_tar:
            with target.open("wb") as f:
                for chunk in chunks():
                    f.write(chunk)
            console.print(f"saved {target} ({_size(target.stat().st_size)})")
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
        try:
            files = extract_tar(_ChunkReader(chunks()), partial)
            digest = "sha256:" + hashlib.sha256(manifest_bytes(files)).hexdigest()
            if digest != r.headers.get("x-digest"):
                raise LmaasError("the folder received does not match its manifest digest")
            if target.exists():
                target.rmdir()
            partial.rename(target)
        except LmaasError as exc:
            console.print(f"[red]error:[/red] {exc.message}")
            raise typer.Exit(1) from exc
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    console.print(f"saved {target}/ ({len(files)} files, {_size(sum(f.size for f in files))})")


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


requests_app = typer.Typer(help="Query the record of inference requests", no_args_is_help=True)


@requests_app.command("ls")
def list_requests(
    model: Annotated[str | None, typer.Option(help="Only this model")] = None,
    status: Annotated[str | None, typer.Option(help="ok | error | cancelled")] = None,
    since: Annotated[str | None, typer.Option(help="ISO time, e.g. 2026-11-22T08:00:00Z")] = None,
    key_id: Annotated[str | None, typer.Option("--key-id", help="Only this API key id")] = None,
    limit: Annotated[int, typer.Option(help="Rows")] = 50,
    url: UrlOpt = "http://127.0.0.1:8000",
    key: KeyOpt = None,
) -> None:
    """The newest request records, one row each."""
    params = {"model": model, "status": status, "since": since, "key": key_id, "limit": limit}
    with _client(url, key) as c:
        page = _check(c.get("/admin/requests", params={k: v for k, v in params.items() if v}))
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
            t["endpoint"],
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
