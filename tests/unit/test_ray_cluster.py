"""The ``ray`` cluster kind without a Ray cluster: its settings, the numbers it asks Ray for, a
node's blob cache against a fake gateway, the actor's handshake and worker start over real TCP
with a stand-in worker, the replica's supervision over fake actors (a lost node is re-placed),
and the gateway's internal blob route. The real multi-node cluster is in
``tests/e2e/test_ray.py``."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from lmaas.config import ClusterSettings, EngineConfig, Settings, load_settings
from lmaas.controller.cluster.base import ModelFile, ModelRef
from lmaas.controller.cluster.kinds import installed_kinds
from lmaas.controller.cluster.ray import RayReplica, default_gateway_url, ray_cpus
from lmaas.controller.cluster.ray_host import HostSpec, ReplicaHost
from lmaas.controller.cluster.ray_spread import Spreader
from lmaas.controller.pool import replica_need
from lmaas.engine.ipc import read_frame
from lmaas.errors import InvalidRequestError
from lmaas.gateway.errors import install_error_handlers
from lmaas.gateway.routes import internal
from lmaas.protocol.engine import GenerateRequest, SamplingParams
from lmaas.store.blobs import BlobStore
from lmaas.store.folder import FolderFile
from lmaas.store.node_cache import BlobFetchError, NodeCache, Source

FAKE_WORKER = (sys.executable, str(Path(__file__).resolve().parents[1] / "fake_worker.py"))


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- settings ---------------------------------------------------------------------------------


def test_a_ray_address_makes_ray_the_kind_unless_a_kind_is_given() -> None:
    assert ClusterSettings().kind == "local"
    assert ClusterSettings(ray_address="10.0.0.5:6379").kind == "ray"
    assert ClusterSettings(ray_address="10.0.0.5:6379", kind="local").kind == "local"
    # load_settings validates twice (file settings, then plain): the kind survives
    again = Settings.model_validate(Settings(cluster={"ray_address": "h:6379"}).model_dump())
    assert again.cluster.kind == "ray"


def test_ray_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMAAS_CLUSTER__RAY_ADDRESS", "10.0.0.5:6379")
    monkeypatch.setenv("LMAAS_CLUSTER__RAY_RESOURCES", '{"lmaas_worker": 1}')
    cluster = load_settings().cluster
    assert (cluster.kind, cluster.ray_address) == ("ray", "10.0.0.5:6379")
    assert cluster.ray_resources == {"lmaas_worker": 1.0}


def test_the_ray_address_flag_merges_with_the_config_file_s_cluster(tmp_path: Path) -> None:
    config = tmp_path / "lmaas.yaml"
    config.write_text(
        "cluster:\n  kind: local\n  node_cache_dir: /srv/cache\n  cpu_overcommit: 2\n"
    )
    cluster = load_settings(config, cluster={"kind": "ray", "ray_address": "h:6379"}).cluster
    assert (cluster.kind, cluster.ray_address) == ("ray", "h:6379")
    assert (cluster.node_cache_dir, cluster.cpu_overcommit) == ("/srv/cache", 2.0)


def test_gateway_urls_are_checked() -> None:
    with pytest.raises(ValueError, match="gateway_url"):
        ClusterSettings(gateway_url="http://h:1/path")
    assert ClusterSettings(gateway_url="https://gw.internal:8443").gateway_url


def test_ray_is_a_registered_kind() -> None:
    assert {"local", "ray"} <= set(installed_kinds().names())


def test_the_ray_kind_says_how_to_install_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    settings = Settings(cluster={"kind": "ray"})
    with pytest.raises(InvalidRequestError, match=r"lmaas\[ray\]"):
        installed_kinds().create(settings, None)


# -- what the cluster asks for and where nodes fetch from ---------------------------------------


def test_ray_cpus_count_threads_as_the_local_pool_does() -> None:
    assert ray_cpus(1, 8.0) == 0.125
    assert ray_cpus(4, 1.0) == 4
    assert ray_cpus(3, 2.0) == 1.5
    assert ray_cpus(1, 1024) == 0.001  # Ray's precision is 1/10000
    assert ray_cpus(1, 1e9) == 0.0001


def test_the_default_gateway_url_is_reachable_from_nodes() -> None:
    assert default_gateway_url(Settings(port=8000), "10.0.0.5") == "http://127.0.0.1:8000"
    wide = Settings(host="0.0.0.0", port=9000)
    assert default_gateway_url(wide, "10.0.0.5") == "http://10.0.0.5:9000"
    v6 = Settings(host="::", port=9000)
    assert default_gateway_url(v6, "fd00::5") == "http://[fd00::5]:9000"
    with pytest.raises(InvalidRequestError, match="gateway_url"):
        default_gateway_url(Settings(port=0), "10.0.0.5")


class FakeRayApi:
    """The part of the ``ray`` module ``RayCluster`` uses."""

    def __init__(self, nodes: list[dict[str, Any]]) -> None:
        self._nodes = nodes
        self.inits: list[dict[str, Any]] = []
        self.made: list[tuple[dict[str, Any], Any]] = []
        self.util = SimpleNamespace(
            get_node_ip_address=lambda: "10.0.0.2",
            scheduling_strategies=SimpleNamespace(NodeAffinitySchedulingStrategy=SimpleNamespace),
        )

    def init(self, **kwargs: Any) -> None:
        self.inits.append(kwargs)

    def nodes(self) -> list[dict[str, Any]]:
        return self._nodes

    def cluster_resources(self) -> dict[str, float]:
        alive = [n["Resources"] for n in self._nodes if n["Alive"]]
        return {k: sum(r.get(k, 0) for r in alive) for k in ("CPU", "memory")}

    def remote(self, cls: type) -> Any:
        api = self

        class Options:
            def options(self, **options: Any) -> Any:
                return SimpleNamespace(remote=lambda spec: api.made.append((options, spec)))

        return Options()


NODES = [
    {"NodeID": "a" * 56, "Alive": True, "Resources": {"CPU": 4.0, "memory": 8.0 * 2**30}},
    {"NodeID": "b" * 56, "Alive": True, "Resources": {"CPU": 2.0, "memory": 4.0 * 2**30}},
    {"NodeID": "c" * 56, "Alive": False, "Resources": {"CPU": 16.0, "memory": 64.0 * 2**30}},
]


def store_ref(engine: EngineConfig | None = None) -> ModelRef:
    return ModelRef(
        "chat",
        engine or EngineConfig(threads=1, context_size=1024),
        model="chat",
        version=3,
        format="gguf",
        digest=sha(b"GGUF"),
        files=(ModelFile("model.gguf", sha(b"GGUF"), 100 * 2**20),),
    )


def ray_cluster(tmp_path: Path, **cluster: Any) -> tuple[Any, FakeRayApi]:
    from lmaas.controller.cluster.ray import RayCluster

    api = FakeRayApi(NODES)
    settings = Settings(port=8000, cluster={"ray_address": "10.0.0.1:6379", **cluster})
    store = SimpleNamespace(blobs=BlobStore(tmp_path))
    return RayCluster(settings, store, api=api), api  # type: ignore[arg-type]


def test_the_ray_cluster_joins_the_address_and_counts_live_nodes(tmp_path: Path) -> None:
    cluster, api = ray_cluster(tmp_path, ray_namespace="prod")
    assert api.inits[0]["address"] == "10.0.0.1:6379"
    assert api.inits[0]["namespace"] == "prod"
    capacity = cluster.capacity()
    assert (capacity.cores, capacity.memory) == (6, 12 * 2**30)
    assert capacity.node == "ray (2 nodes)"
    assert cluster.gateway_url == "http://127.0.0.1:8000"


def test_a_replica_actor_asks_ray_for_what_the_pool_counts(tmp_path: Path) -> None:
    cluster, api = ray_cluster(
        tmp_path, ray_resources={"lmaas_worker": 1}, ray_label_selector={"zone": "a"}
    )
    model = store_ref()
    cluster.spawn(model)
    ((options, spec),) = api.made
    assert options["num_cpus"] == 0.125  # 1 thread at the default overcommit of 8
    assert options["resources"] == {"lmaas_worker": 1.0}
    assert options["label_selector"] == {"zone": "a"}
    # A label selector: Ray spreads (it does not combine labels with a node affinity).
    assert (options["max_restarts"], options["scheduling_strategy"]) == (0, "SPREAD")
    need = replica_need(model.engine, model.memory_facts(), 1)
    assert options["memory"] == need.memory + need.shared_memory > 100 * 2**20
    assert (spec.gateway_url, spec.token, spec.digest) == (
        "http://127.0.0.1:8000",
        cluster.token,
        sha(b"GGUF"),
    )
    assert spec.files == (FolderFile("model.gguf", sha(b"GGUF"), 100 * 2**20),)
    # threads 0: the largest live node's CPUs
    cluster.spawn(store_ref(EngineConfig(threads=0)))
    assert api.made[1][0]["num_cpus"] == 0.5  # 4 threads / 8
    assert "resources" not in ray_cluster(tmp_path)[0].demand(model)


def test_the_ray_cluster_serves_store_models_and_only_their_blobs(tmp_path: Path) -> None:
    cluster, _ = ray_cluster(tmp_path)
    with pytest.raises(InvalidRequestError, match="models push"):
        cluster.check(ModelRef("chat", EngineConfig(), path="/models/x.gguf"))
    model = store_ref()
    cluster.check(model)
    stored = cluster.store.blobs.write([b"GGUF"], max_bytes=4)
    hexdigest = sha(b"GGUF")[7:]
    assert cluster.blob_path(hexdigest) is None  # no replica of it yet
    cluster.new_replica(model, index=0)
    assert cluster.blob_path(hexdigest) == stored.path
    assert cluster.blob_path("0" * 64) is None
    assert cluster.token_ok(cluster.token) and not cluster.token_ok("guess")


# -- the node's cache ---------------------------------------------------------------------------


class FakeGateway:
    """The blob route of a gateway: serves ``blobs`` (hex -> bytes) to the right token."""

    def __init__(self, blobs: dict[str, bytes], token: str = "t0k") -> None:
        self.blobs = blobs
        self.token = token
        self.requests: list[str] = []

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self.handle))

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request.url.path)
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return httpx.Response(401, text="no")
        data = self.blobs.get(request.url.path.rsplit("/", 1)[-1])
        return (
            httpx.Response(404, text="none") if data is None else httpx.Response(200, content=data)
        )


def test_a_node_fetches_a_gguf_blob_once_and_checks_its_hash(tmp_path: Path) -> None:
    data = b"GGUF" + b"x" * 5000
    gateway = FakeGateway({sha(data)[7:]: data})
    cache = NodeCache(tmp_path)
    files = [FolderFile("model.gguf", sha(data), len(data))]
    source = Source("http://gw:8000", "t0k")
    path = cache.model_path(source, "gguf", sha(data), files, gateway.client())
    assert path.read_bytes() == data
    assert gateway.requests == [f"/internal/blobs/{sha(data)[7:]}"]
    # cached: no second download
    assert cache.model_path(source, "gguf", sha(data), files, gateway.client()) == path
    assert len(gateway.requests) == 1


def test_a_node_refuses_bytes_that_do_not_hash_to_the_digest(tmp_path: Path) -> None:
    wanted, served = b"the real weights", b"evil weights!!!!"
    gateway = FakeGateway({sha(wanted)[7:]: served})
    cache = NodeCache(tmp_path)
    files = [FolderFile("model.gguf", sha(wanted), len(wanted))]
    with pytest.raises(BlobFetchError, match="discarded"):
        cache.model_path(Source("http://gw", "t0k"), "gguf", sha(wanted), files, gateway.client())
    assert not cache.blobs.exists(sha(wanted))
    assert not cache.blobs.exists(sha(served))  # not kept under its own name either
    longer = FakeGateway({sha(wanted)[7:]: wanted + b"more"})
    with pytest.raises(BlobFetchError):
        cache.model_path(Source("http://gw", "t0k"), "gguf", sha(wanted), files, longer.client())
    refused = FakeGateway({sha(wanted)[7:]: wanted}, token="other")
    with pytest.raises(BlobFetchError, match="401"):
        cache.model_path(Source("http://gw", "t0k"), "gguf", sha(wanted), files, refused.client())


def test_a_node_builds_a_folder_from_fetched_blobs(tmp_path: Path) -> None:
    config, weights = b'{"model_type": "bert"}', b"\x00" * 100
    gateway = FakeGateway({sha(config)[7:]: config, sha(weights)[7:]: weights})
    files = [
        FolderFile("config.json", sha(config), len(config)),
        FolderFile("sub/model.safetensors", sha(weights), len(weights)),
    ]
    manifest = sha(b"manifest")
    cache = NodeCache(tmp_path)
    folder = cache.model_path(Source("http://gw", "t0k"), "hf", manifest, files, gateway.client())
    assert folder == tmp_path / "models" / manifest[7:]
    assert (folder / "config.json").read_bytes() == config
    assert (folder / "sub" / "model.safetensors").read_bytes() == weights


# -- the actor ------------------------------------------------------------------------------------


def host_spec(**overrides: Any) -> HostSpec:
    values: dict[str, Any] = {
        "name": "chat",
        "engine_json": EngineConfig().model_dump_json(),
        "format": "gguf",
        "digest": sha(b"x"),
        "files": (),
        "gateway_url": "http://gw",
        "token": "t0k",
        "cache_dir": "/nonexistent",
        "accept_timeout": 20.0,
        "worker_command": FAKE_WORKER,
    }
    values.update(overrides)
    return HostSpec(**values)


def test_the_actor_runs_the_worker_on_the_connection_that_presents_the_secret(
    tmp_path: Path,
) -> None:
    model = tmp_path / "model"
    model.write_bytes(b"GGUF-fake-model")
    host = ReplicaHost(host_spec())
    host.path = model
    port = host.listen("127.0.0.1")
    secret = b"s" * 32
    with ThreadPoolExecutor(1) as pool:
        serving = pool.submit(host.serve, secret)
        # a stranger first: dropped without a worker
        with socket.create_connection(("127.0.0.1", port)) as stranger:
            stranger.sendall(b"x" * 32)
            assert stranger.recv(1) == b""
        with socket.create_connection(("127.0.0.1", port)) as gateway:
            gateway.sendall(secret)
            frame = asyncio.run(_first_frame(gateway))
            assert frame["k"] == "ready"
            assert frame["info"]["architecture"] == "GGUF-fake-model"
            assert frame["info"]["path"] == str(model)
        assert serving.result(timeout=20) == 0  # the worker exits when the gateway goes


async def _first_frame(sock: socket.socket) -> dict[str, Any]:
    reader, writer = await asyncio.open_connection(sock=sock.dup())
    try:
        frame = await read_frame(reader)
        assert frame is not None
        return frame
    finally:
        writer.close()


def test_the_actor_gives_up_when_the_gateway_never_connects() -> None:
    host = ReplicaHost(host_spec(accept_timeout=0.2))
    host.path = Path("/dev/null")
    host.listen("127.0.0.1")
    with pytest.raises(TimeoutError):
        host.serve(b"s" * 32)


# -- the replica over fake actors ---------------------------------------------------------------


class FakeActor:
    """Runs a ``ReplicaHost`` on threads of this process as Ray would on a node: its methods'
    ``remote()`` return awaitables."""

    def __init__(self, spec: HostSpec, node: str, model_file: Path) -> None:
        self.host = ReplicaHost(spec)
        self.node = node
        self.model_file = model_file
        self.killed = False
        self._pool = ThreadPoolExecutor(2)
        self.prepare = SimpleNamespace(remote=lambda: self._call(self._prepare))
        self.serve = SimpleNamespace(remote=lambda secret: self._call(self.host.serve, secret))

    def _call(self, fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
        return asyncio.wrap_future(self._pool.submit(fn, *args))

    def _prepare(self) -> dict[str, Any]:
        self.host.path = self.model_file  # fetching is NodeCache's, tested above
        return {"ip": "127.0.0.1", "port": self.host.listen("127.0.0.1"), "node": self.node}

    def lose_node(self) -> None:
        proc = self.host.proc
        assert proc is not None
        proc.kill()

    def kill(self) -> None:
        self.killed = True
        proc = self.host.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self._pool.shutdown(wait=False)


class FakeRayCluster:
    def __init__(self, model_file: Path) -> None:
        self.model_file = model_file
        self.actors: list[FakeActor] = []
        self.spreader = Spreader()

    def spawn(self, model: ModelRef, replica: str = "") -> tuple[FakeActor, dict[str, Any]]:
        actor = FakeActor(host_spec(), f"node-{len(self.actors)}", self.model_file)
        self.actors.append(actor)
        return actor, {"num_cpus": 0.125, "memory": 1 << 20}

    def kill(self, actor: FakeActor) -> None:
        actor.kill()


@pytest.fixture
def ray_replica(tmp_path: Path) -> Iterator[tuple[RayReplica, FakeRayCluster]]:
    model_file = tmp_path / "model"
    model_file.write_bytes(b"GGUF")
    cluster = FakeRayCluster(model_file)
    model = ModelRef(
        "chat",
        EngineConfig(),
        model="chat",
        version=1,
        format="gguf",
        digest=sha(b"GGUF"),
        files=(ModelFile("model.gguf", sha(b"GGUF"), 4),),
    )
    replica = RayReplica(
        model,
        0,
        cluster=cluster,  # type: ignore[arg-type]
        start_timeout=30,
        health_interval=0.2,
        backoff_max=0.5,
    )
    yield replica, cluster
    for actor in cluster.actors:
        actor.kill()


async def _until(condition: Callable[[], bool], timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - a condition on another thread's work
            await asyncio.sleep(0.02)


async def _generate(replica: RayReplica, rid: str) -> str:
    request = GenerateRequest(request_id=rid, prompt=[1], sampling=SamplingParams())
    return "".join([event.text async for event in replica.generate(request)])


async def test_a_ray_replica_serves_and_is_placed_again_when_its_node_is_lost(
    ray_replica: tuple[RayReplica, FakeRayCluster],
) -> None:
    replica, cluster = ray_replica
    await replica.start()
    assert await replica.wait_ready(30)
    assert replica.node == "node-0" and replica.health().node == "node-0"
    assert await _generate(replica, "a") == "ok"

    cluster.actors[0].lose_node()
    await _until(lambda: replica.ready and replica.node == "node-1")
    assert replica.restarts == 1
    assert cluster.actors[0].killed  # the old actor is killed for good, not left to Ray
    assert await _generate(replica, "b") == "ok"

    await replica.stop()
    assert replica.state == "stopped" and not replica.ready
    assert cluster.actors[1].killed
    assert len(cluster.actors) == 2


async def test_a_ray_replica_says_what_it_waits_for_while_ray_cannot_place_it(
    ray_replica: tuple[RayReplica, FakeRayCluster], monkeypatch: pytest.MonkeyPatch
) -> None:
    replica, cluster = ray_replica
    placed = threading.Event()
    monkeypatch.setattr("lmaas.controller.cluster.ray._PLACEMENT_NOTE_AFTER", 0.05)
    real_spawn = cluster.spawn

    def slow_spawn(model: ModelRef, replica: str = "") -> tuple[FakeActor, dict[str, Any]]:
        actor, options = real_spawn(model, replica)
        prepare = actor._prepare

        def wait_then_prepare() -> dict[str, Any]:
            assert placed.wait(30)
            return prepare()

        actor._prepare = wait_then_prepare  # type: ignore[method-assign]
        return actor, options

    cluster.spawn = slow_spawn  # type: ignore[method-assign]
    await replica.start()
    await _until(lambda: replica.last_error is not None)
    assert replica.state == "starting" and replica.node == ""
    assert "waiting for Ray to place it on a node with 0.125 CPU and 1 MiB" in str(
        replica.last_error
    )
    placed.set()
    assert await replica.wait_ready(30)
    assert replica.last_error is None
    await replica.stop(now=True)


# -- the gateway's blob route -------------------------------------------------------------------


class Blobs:
    def __init__(self, root: Path, served: dict[str, bytes]) -> None:
        self.paths = {}
        for hexdigest, data in served.items():
            path = root / hexdigest
            path.write_bytes(data)
            self.paths[hexdigest] = path

    def token_ok(self, token: str) -> bool:
        return token == "t0k"

    def blob_path(self, hexdigest: str) -> Path | None:
        return self.paths.get(hexdigest)


async def test_the_blob_route_serves_served_blobs_to_the_cluster_token_only(
    tmp_path: Path,
) -> None:
    data = b"weights" * 1000
    hexdigest = sha(data)[7:]
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(internal.router)
    app.state.blob_source = Blobs(tmp_path, {hexdigest: data})
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        url = f"/internal/blobs/{hexdigest}"
        ok = await client.get(url, headers={"Authorization": "Bearer t0k"})
        assert ok.status_code == 200 and ok.content == data
        assert (await client.get(url)).status_code == 401
        wrong = await client.get(url, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        other = await client.get(
            f"/internal/blobs/{'0' * 64}", headers={"Authorization": "Bearer t0k"}
        )
        assert other.status_code == 404
        for bad in (
            "..%2f..%2fetc%2fpasswd",
            hexdigest.upper(),
            hexdigest[:-1],
            "sha256:" + hexdigest,
        ):
            r = await client.get(f"/internal/blobs/{bad}", headers={"Authorization": "Bearer t0k"})
            assert r.status_code in (400, 404), bad
            assert r.content != data


def test_a_peer_trickling_bytes_cannot_hold_the_secret_check_past_its_deadline() -> None:
    import socket
    import time

    from lmaas.controller.cluster.ray_host import _presents

    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(b"x")  # one byte, then nothing: the check must give up at its deadline
        started = time.monotonic()
        assert not _presents(ours, b"s" * 32, 0.3)
        assert time.monotonic() - started < 2
    good_a, good_b = socket.socketpair()
    with good_a, good_b:
        good_b.sendall(b"s" * 32)
        assert _presents(good_a, b"s" * 32, 5)
