"""`lmaas deploy|scale|undeploy|ps`: deployments of a running server, over its admin API."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.table import Table

from lmaas.cli.http import (
    DEFAULT_URL,
    AdminClient,
    KeyOpt,
    UrlOpt,
    admin_path,
    check_served_name,
    console,
)

WaitOpt = Annotated[
    bool, typer.Option("--wait/--no-wait", help="Wait until every replica is ready")
]
TimeoutOpt = Annotated[float, typer.Option(help="Seconds to wait for readiness")]


def _wait_ready(c: AdminClient, name: str, timeout: float) -> dict[str, Any]:
    """Poll the deployment with a live status line until it is ready, failed or timed out."""
    deadline = time.monotonic() + timeout
    path = admin_path("deployments", name)
    with console.status(f"starting {name}") as status:
        while True:
            d: dict[str, Any] = c.get(path)
            status.update(
                f"{name}: {d['state']} ({d['ready_replicas']}/{d['replicas']} replicas ready)"
            )
            if d["state"] in ("ready", "stopped", "pending") or time.monotonic() > deadline:
                return d
            active = [r["state"] for r in d["replica_status"] if r["state"] != "draining"]
            if "pending" in active and set(active) <= {"ready", "pending"}:
                return d  # the rest waits for room in the pool
            if d["state"] == "failed" and all(r["restarts"] > 0 for r in d["replica_status"]):
                return d
            time.sleep(0.25)


def _autoscaled(d: dict[str, Any], *, short: bool = False) -> str:
    auto = d.get("autoscaling")
    if not auto:
        return ""
    c = auto["config"]
    if short:
        return f" (auto {c['min_replicas']}-{c['max_replicas']})"
    return (
        f" (autoscaled {c['min_replicas']}-{c['max_replicas']}, "
        f"{c['target_ongoing_requests']:g} ongoing per replica)"
    )


def _show(d: dict[str, Any]) -> None:
    colour = {"ready": "green", "failed": "red", "degraded": "yellow"}.get(d["state"], "cyan")
    version = f"v{d['version']}" if d["version"] is not None else (d["path"] or "-")
    console.print(
        f"[bold]{d['name']}[/bold] → {d['model'] or d['path']} {version}"
        f"{' (follows ' + d['follows'] + ')' if d['follows'] else ''}: "
        f"[{colour}]{d['state']}[/{colour}], {d['ready_replicas']}/{d['replicas']} ready"
        f"{_autoscaled(d)}"
    )
    placement = d.get("placement") or {}
    asked = [f"{k}={v:g}" for k, v in placement.get("resources", {}).items()]
    asked += [f"{k}={v}" for k, v in placement.get("label_selector", {}).items()]
    if asked:
        console.print(f"  placement: {', '.join(asked)}")
    if d["last_error"]:
        console.print(f"  [red]last error:[/red] {d['last_error']}")


def _autoscaling(
    min_replicas: int | None,
    max_replicas: int | None,
    target: float | None,
    upscale_delay: float | None,
    downscale_delay: float | None,
) -> dict[str, Any] | None:
    """The ``autoscaling`` object the flags ask for (None: no flag given)."""
    given = {
        "min_replicas": min_replicas,
        "max_replicas": max_replicas,
        "target_ongoing_requests": target,
        "upscale_delay_s": upscale_delay,
        "downscale_delay_s": downscale_delay,
    }
    auto = {k: v for k, v in given.items() if v is not None}
    if not auto:
        return None
    if "max_replicas" not in auto:  # Ray Serve's default max (1) would forbid any scaling
        auto["max_replicas"] = max(auto.get("min_replicas", 1), 1)
    return auto


def _pairs(given: list[str] | None, flag: str) -> dict[str, str]:
    """``K=V`` flags as a dict (a bad one exits with a usage error)."""
    pairs: dict[str, str] = {}
    for item in given or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{item!r} is not NAME=VALUE", param_hint=flag)
        pairs[key.strip()] = value.strip()
    return pairs


def _placement(resources: list[str] | None, labels: list[str] | None) -> dict[str, Any] | None:
    """The ``placement`` object the flags ask for (None: no flag given); the server checks
    the names and values."""
    placement: dict[str, Any] = {}
    if resources:
        asked: dict[str, float] = {}
        for name, value in _pairs(resources, "--resource").items():
            try:
                asked[name] = float(value)
            except ValueError:
                raise typer.BadParameter(
                    f"{name}={value}: the quantity is not a number", param_hint="--resource"
                ) from None
        placement["resources"] = asked
    if labels:
        placement["label_selector"] = _pairs(labels, "--label")
    return placement or None


def deploy(
    model: Annotated[str, typer.Argument(help="name, name:alias or name:3 of the store")],
    name: Annotated[
        str | None, typer.Option(help="Name clients use in `model` [default: the model's name]")
    ] = None,
    replicas: Annotated[
        int | None, typer.Option(min=0, max=64, help="Worker processes [default: 1]")
    ] = None,
    context_size: Annotated[int | None, typer.Option(help="KV cache tokens per replica")] = None,
    max_num_seqs: Annotated[int | None, typer.Option(help="Sequences per replica batch")] = None,
    min_replicas: Annotated[
        int | None, typer.Option(min=0, max=64, help="Autoscale: fewest replicas (0: to zero)")
    ] = None,
    max_replicas: Annotated[
        int | None, typer.Option(min=1, max=64, help="Autoscale: most replicas")
    ] = None,
    target_ongoing_requests: Annotated[
        float | None, typer.Option(help="Autoscale: requests per replica to aim at [default: 2]")
    ] = None,
    upscale_delay: Annotated[
        float | None, typer.Option(help="Autoscale: upscale_delay_s [default: 30]")
    ] = None,
    downscale_delay: Annotated[
        float | None, typer.Option(help="Autoscale: downscale_delay_s [default: 600]")
    ] = None,
    resource: Annotated[
        list[str] | None,
        typer.Option(
            metavar="NAME=N",
            help="Ray cluster: a custom resource each replica asks for (repeatable)",
        ),
    ] = None,
    label: Annotated[
        list[str] | None,
        typer.Option(
            metavar="KEY=VALUE",
            help="Ray cluster: a node label each replica's node must have; VALUE may be !v, "
            "in(a,b) or !in(a,b) (repeatable)",
        ),
    ] = None,
    wait: WaitOpt = True,
    timeout: TimeoutOpt = 300.0,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
) -> None:
    """Serve a model of the store with N replicas, or autoscaled between --min-replicas and
    --max-replicas; on a Ray cluster, --resource and --label choose the nodes."""
    body: dict[str, Any] = {"model": model}
    auto = _autoscaling(
        min_replicas, max_replicas, target_ongoing_requests, upscale_delay, downscale_delay
    )
    if auto is not None:
        body["autoscaling"] = auto
    placement = _placement(resource, label)
    if placement is not None:
        body["placement"] = placement
    if replicas is not None or auto is None:
        body["replicas"] = 1 if replicas is None else replicas
    if name:
        body["name"] = name
    engine = {
        k: v for k, v in {"context_size": context_size, "max_num_seqs": max_num_seqs}.items() if v
    }
    if engine:
        body["engine"] = engine
    with AdminClient(url, key) as c:
        d = c.post("/admin/deployments", json=body)
        if wait:
            d = _wait_ready(c, d["name"], timeout)
    _show(d)
    scaled_to_zero = d["state"] == "stopped" and d.get("autoscaling")
    if wait and d["state"] != "ready" and not scaled_to_zero:
        raise typer.Exit(1)


def scale(
    name: str,
    replicas: Annotated[int, typer.Argument(min=0, max=64)],
    wait: WaitOpt = True,
    timeout: TimeoutOpt = 300.0,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
) -> None:
    """Change a deployment's replica count (retired replicas finish their requests first)."""
    path = admin_path("deployments", check_served_name(name))
    with AdminClient(url, key) as c:
        d = c.patch(path, json={"replicas": replicas})
        if wait:
            d = _wait_ready(c, name, timeout)
    _show(d)


def undeploy(name: str, url: UrlOpt = DEFAULT_URL, key: KeyOpt = None) -> None:
    """Stop serving a deployment (in-flight requests finish first)."""
    path = admin_path("deployments", check_served_name(name))
    with AdminClient(url, key) as c:
        c.delete(path)
    console.print(f"undeployed {name}")


def _gib(n: int) -> str:
    return f"{n / 1024**3:.1f}"


def _needs(d: dict[str, Any]) -> str:
    need = d.get("resources")
    if not need:
        return ""
    how = "" if need["measured"] else " (estimated)"
    text = f"{need['cpu_threads']} threads, {need['memory_bytes'] / 1024**2:.0f} MiB{how} each"
    if need["shared_memory_bytes"]:
        text += f" + {need['shared_memory_bytes'] / 1024**2:.0f} MiB file"
    return text


def ps(url: UrlOpt = DEFAULT_URL, key: KeyOpt = None) -> None:
    """Deployments and their replicas, what each replica holds and what the machine has left
    (a replica `pending` waits for room: its last error says what is missing)."""
    with AdminClient(url, key) as c:
        listed = c.get("/admin/deployments")
    data = listed["data"]
    table = Table(
        "deployment",
        "model",
        "version",
        "replica",
        "state",
        "node",
        "restarts",
        "busy",
        "holds",
        "last error",
    )
    for d in data:
        version = str(d["version"]) if d["version"] is not None else "-"
        if d["follows"]:
            version += f" ({d['follows']})"
        head = [d["name"], d["model"] or d["path"] or "-", version]
        table.add_row(
            *head,
            "",
            f"{d['state']} {d['ready_replicas']}/{d['replicas']}{_autoscaled(d, short=True)}",
            "",
            "",
            "",
            _needs(d),
            d["last_error"] or "",
            style="bold",
        )
        for r in d["replica_status"]:
            table.add_row(
                "",
                "",
                str(r["version"] or "-"),
                f"#{r['index']}",
                r["state"],
                r["node"],
                str(r["restarts"]),
                str(r["outstanding"]),
                "",
                (r["last_error"] or "")[:60],
            )
    console.print(table)
    pool = listed.get("pool")
    if pool:
        console.print(
            f"{pool['node']}: {pool['replicas']} replicas hold {pool['cpu_threads_used']} of "
            f"{pool['cpu_threads']} CPU threads ({pool['cores']} cores) and "
            f"{_gib(pool['memory_bytes_used'])} of {_gib(pool['memory_bytes'])} GiB"
        )
