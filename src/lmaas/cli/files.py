"""`lmaas files push|ls|rm`: the Files API (``/v1/files``) of a running server.

Any active key works (``--key`` / ``LMAAS_API_KEY``); a key sees only the files it uploaded,
an admin key every file. ``push`` streams the file as ``multipart/form-data`` with a progress
bar, never reading it whole into memory.
"""

from __future__ import annotations

import re
import secrets
import unicodedata
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Final

import typer
from rich.markup import escape
from rich.table import Table

from lmaas.cli.http import (
    CHUNK,
    DEFAULT_URL,
    AdminClient,
    UrlOpt,
    console,
    fail,
    size_text,
    upload,
)

files_app = typer.Typer(help="Upload, list and delete files (/v1/files)", no_args_is_help=True)

KeyOpt = Annotated[
    str | None,
    typer.Option("--key", envvar="LMAAS_API_KEY", help="API key (admin or inference)"),
]
PURPOSES: Final = ("batch", "fine-tune", "evals", "user_data")
FILE_ID_RE: Final = re.compile(r"file-[0-9a-f]{24}")


def _when(created_at: int) -> str:
    return datetime.fromtimestamp(created_at, UTC).strftime("%Y-%m-%d %H:%M:%S")


def multipart_upload(path: Path, purpose: str) -> tuple[int, str, Iterator[bytes]]:
    """(length, Content-Type, body) of an upload of ``path``: the ``purpose`` field, then the
    file's bytes read in chunks as the body is sent."""
    name = path.name
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        fail(f"{name!r}: rename the file, its name holds control characters", code=2)
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')
    boundary = f"lmaas-{secrets.token_hex(16)}"
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="purpose"\r\n\r\n'
        f"{purpose}\r\n"
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{quoted}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    size = path.stat().st_size

    def body() -> Iterator[bytes]:
        yield head
        with path.open("rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk
        yield tail

    return len(head) + size + len(tail), f"multipart/form-data; boundary={boundary}", body()


@files_app.command("push")
def push(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    purpose: Annotated[
        str, typer.Option(help=f"What the file is for: {', '.join(PURPOSES)}")
    ] = "batch",
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
) -> None:
    """Upload a file (JSONL for batch, fine-tune and evals: checked by the server)."""
    if purpose not in PURPOSES:
        fail(f"--purpose must be one of {', '.join(PURPOSES)}", code=2)
    length, content_type, chunks = multipart_upload(path, purpose)
    headers = {"Content-Type": content_type, "Content-Length": str(length)}
    with AdminClient(url, key, timeout=3600) as c:
        label = f"push {escape(path.name)}"
        f = upload(c, "/v1/files", chunks, total=length, label=label, headers=headers)
    console.print(f"{f['id']} {escape(f['filename'])} ({f['purpose']}, {size_text(f['bytes'])})")


@files_app.command("ls")
def list_files(
    purpose: Annotated[str | None, typer.Option(help="Only files of this purpose")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="Rows")] = 100,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
) -> None:
    """The newest files the key can see, one row each."""
    params: dict[str, str | int] = {"limit": limit}
    if purpose:
        params["purpose"] = purpose
    with AdminClient(url, key) as c:
        page = c.get("/v1/files", params=params)
    table = Table("id", "purpose", "filename", "size", "created")
    for f in page["data"]:
        table.add_row(
            f["id"],
            f["purpose"],
            escape(f["filename"]),
            size_text(f["bytes"]),
            _when(f["created_at"]),
        )
    console.print(table)
    if page["has_more"]:
        console.print(f"(more files: raise --limit above {limit})")


@files_app.command("rm")
def remove(
    file_id: Annotated[str, typer.Argument(metavar="ID", help="A file id (file-...)")],
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
) -> None:
    """Delete a file (refused while a job uses it)."""
    if FILE_ID_RE.fullmatch(file_id) is None:
        fail(f"{file_id!r} is not a file id (file- and 24 hex digits)", code=2)
    with AdminClient(url, key) as c:
        c.delete(f"/v1/files/{file_id}")
    console.print(f"deleted {file_id}")
