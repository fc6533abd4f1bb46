"""`lmaas requests ls`: the record of inference requests of a running server."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from lmaas.cli.http import DEFAULT_URL, AdminClient, KeyOpt, UrlOpt, console

requests_app = typer.Typer(help="Query the record of inference requests", no_args_is_help=True)

_COLUMNS = (
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


@requests_app.command("ls")
def list_requests(
    model: Annotated[str | None, typer.Option(help="Only this model")] = None,
    status: Annotated[str | None, typer.Option(help="ok | error | cancelled")] = None,
    since: Annotated[str | None, typer.Option(help="ISO time, e.g. 2026-11-22T08:00:00Z")] = None,
    key_id: Annotated[str | None, typer.Option("--key-id", help="Only this API key id")] = None,
    limit: Annotated[int, typer.Option(help="Rows")] = 50,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
) -> None:
    """The newest request records, one row each."""
    params = {"model": model, "status": status, "since": since, "key": key_id, "limit": limit}
    with AdminClient(url, key) as c:
        page = c.get("/admin/requests", params={k: v for k, v in params.items() if v})
    table = Table(*_COLUMNS)
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
