"""`lmaas models ...`: the model store of a running server, over its admin API."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import httpx
import typer
from rich.markup import escape
from rich.table import Table

from lmaas.cli.http import (
    CHUNK,
    DEFAULT_URL,
    AdminClient,
    KeyOpt,
    UrlOpt,
    admin_path,
    check_alias,
    check_model_name,
    check_version_ref,
    console,
    fail,
    progress,
    size_text,
    upload,
)
from lmaas.cli.quantize import quantize
from lmaas.errors import LmaasError
from lmaas.store.folder import (
    FolderFile,
    extract_tar,
    is_pickle_name,
    manifest_bytes,
    member_path,
    tar_chunks,
    tar_length,
)

models_app = typer.Typer(help="Manage models in a running server's store", no_args_is_help=True)
models_app.command("quantize")(quantize)


@models_app.command("ls")
def list_models(url: UrlOpt = DEFAULT_URL, key: KeyOpt = None) -> None:
    """List models with their latest version and aliases."""
    with AdminClient(url, key) as c:
        data = c.get("/admin/models")["data"]
    table = Table("name", "latest", "aliases", "description")
    for m in data:
        aliases = ", ".join(f"{a}→{n}" for a, n in sorted(m["aliases"].items()))
        table.add_row(m["name"], str(m["latest"] or "-"), aliases, m["description"][:60])
    console.print(table)


@models_app.command("show")
def show(name: str, url: UrlOpt = DEFAULT_URL, key: KeyOpt = None) -> None:
    """Show a model and all its versions."""
    path = admin_path("models", check_model_name(name))
    with AdminClient(url, key) as c:
        m = c.get(path)
    table = Table(
        "version", "state", "format", "arch", "params", "ctx", "quant", "size", "aliases", "created"
    )
    for v in m["versions"]:
        params = f"{v['parameter_count'] / 1e6:.0f}M" if v["parameter_count"] else "-"
        state = v.get("state", "ready")
        table.add_row(
            str(v["number"]),
            f"[red]{state}[/red]" if state == "broken" else state,
            v["format"],
            v["architecture"] or "-",
            params,
            str(v["context_length"] or "-"),
            v["quantization"] or "-",
            size_text(v["size_bytes"]),
            ", ".join(v["aliases"]),
            v["created_at"][:19],
        )
    console.print(f"[bold]{m['name']}[/bold] {m['description']}")
    console.print(table)
    for v in m["versions"]:
        if v.get("error"):
            console.print(f"[red]version {v['number']} is broken:[/red] {escape(v['error'])}")


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
            while chunk := f.read(CHUNK):
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
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
) -> None:
    """Upload a new version of NAME (created if needed), with a progress bar. A directory is
    sent as a tar generated on the fly (no temporary file)."""
    target = admin_path("models", check_model_name(name), "versions")
    try:
        total, chunks, ctype = _upload_source(path)
    except LmaasError as exc:
        fail(exc.message)
    headers = {"Content-Type": ctype, "Content-Length": str(total)}
    if description:
        headers["X-Description"] = description
    with AdminClient(url, key, timeout=3600) as c:
        v = upload(c, target, chunks, total=total, label=f"push {path.name}", headers=headers)
    console.print(
        f"{v['model']} version {v['number']} ({v['digest'][:19]}…), {v['format']}, "
        f"{v['architecture']}, {v['quantization']}, {size_text(v['size_bytes'])}"
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
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
) -> None:
    """Download a version. A GGUF file resumes a partial download with an HTTP Range request;
    a Hugging Face folder is written as a directory (or kept as a tar with -o NAME.tar)."""
    name, _, ref = reference.partition(":")
    path = admin_path(
        "models", check_model_name(name), "versions", check_version_ref(ref or "latest")
    )
    with AdminClient(url, key, timeout=3600) as c:
        v = c.get(path)
        content = admin_path("models", v["model"], "versions", str(v["number"]), "content")
        if v["format"] == "hf":
            _pull_folder(c, content, output or Path(f"{v['model']}-v{v['number']}"))
        else:
            _pull_file(c, content, v, output or Path(f"{v['model']}-v{v['number']}.gguf"))


def _pull_file(c: AdminClient, path: str, v: dict[str, Any], target: Path) -> None:
    """A GGUF version into ``target``, resuming a shorter file there with a Range request."""
    have = target.stat().st_size if target.exists() else 0
    if have >= v["size_bytes"]:
        have = 0  # complete or foreign file: start over
    headers = {"Range": f"bytes={have}-"} if have else {}
    with progress() as bar, c.stream(path, headers=headers) as r:
        mode = "ab" if r.status_code == 206 else "wb"
        task = bar.add_task(
            f"pull {target.name}",
            total=v["size_bytes"],
            completed=have if mode == "ab" else 0,
        )
        with target.open(mode) as f:
            for chunk in r.iter_bytes(CHUNK):
                f.write(chunk)
                bar.advance(task, len(chunk))
    console.print(f"saved {target} ({size_text(target.stat().st_size)})")


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


def _pull_folder(c: AdminClient, path: str, target: Path) -> None:
    """Write a Hugging Face version to ``target``: a .tar file as sent, else a new directory,
    extracted into a temporary sibling and renamed into place once its manifest checks out."""
    as_tar = target.suffix.lower() == ".tar"
    if not as_tar and target.exists() and (not target.is_dir() or any(target.iterdir())):
        fail(f"{target} exists and is not an empty directory")
    with progress() as bar, c.stream(path) as r:
        task = bar.add_task(f"pull {target.name}", total=int(r.headers["content-length"]))

        def chunks() -> Iterator[bytes]:
            for chunk in r.iter_bytes(CHUNK):
                bar.advance(task, len(chunk))
                yield chunk

        if as_tar:
            with target.open("wb") as f:
                for chunk in chunks():
                    f.write(chunk)
            console.print(f"saved {target} ({size_text(target.stat().st_size)})")
            return
        files = _extract_checked(r, chunks(), target)
    console.print(f"saved {target}/ ({len(files)} files, {size_text(sum(f.size for f in files))})")


def _extract_checked(r: httpx.Response, chunks: Iterator[bytes], target: Path) -> list[FolderFile]:
    """Extract the tar in ``chunks`` beside ``target`` and move it into place once the files'
    manifest digest matches the one the server sent."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        files = extract_tar(_ChunkReader(chunks), partial)
        digest = "sha256:" + hashlib.sha256(manifest_bytes(files)).hexdigest()
        if digest != r.headers.get("x-digest"):
            raise LmaasError("the folder received does not match its manifest digest")
        if target.exists():
            target.rmdir()
        partial.rename(target)
    except LmaasError as exc:
        fail(exc.message)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return files


@models_app.command("rm")
def remove(
    reference: Annotated[str, typer.Argument(help="NAME (all versions) or NAME:VERSION")],
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
) -> None:
    """Delete a model or one version (refused while it is being served)."""
    name, colon, number = reference.partition(":")
    parts = ["models", check_model_name(name)]
    if colon:
        if not (number.isascii() and number.isdigit()):
            fail(f"{number!r} is not a version number", code=2)
        parts += ["versions", number]
    with AdminClient(url, key) as c:
        c.delete(admin_path(*parts))
    console.print(f"deleted {reference}")


@models_app.command("alias")
def alias(
    name: str,
    alias_name: Annotated[str, typer.Argument(metavar="ALIAS")],
    version: Annotated[
        str | None, typer.Argument(help="version number; omit with --delete")
    ] = None,
    delete: Annotated[bool, typer.Option("--delete", help="Remove the alias")] = False,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
) -> None:
    """Point ALIAS of NAME at a version, or remove it."""
    path = admin_path("models", check_model_name(name), "aliases", check_alias(alias_name))
    if not delete and version is None:
        console.print("[red]give a version number (or --delete)[/red]")
        raise typer.Exit(2)
    with AdminClient(url, key) as c:
        if delete:
            c.delete(path)
            console.print(f"removed {name}:{alias_name}")
            return
        assert version is not None
        v = c.put(path, json={"version": int(version) if version.isdigit() else version})
    console.print(f"{name}:{alias_name} → version {v['number']}")
