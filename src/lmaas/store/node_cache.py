"""A cluster node's own copy of the model files it serves, fetched by digest from the gateway.

Nodes share no disk with the gateway. A replica on a node asks the gateway's blob route
(``GET /internal/blobs/<hex>``, with the cluster's token) for each file of its model by sha256
digest, streams it into a blob store of the node (``<cache>/blobs/sha256-<hex>``, the same
content-addressed layout and atomic writes as the gateway's store), and keeps it only when its
bytes hash to the digest asked for. A Hugging Face folder is then built from hard links to those
blobs (``<cache>/models/<manifest hex>/``), as the gateway builds its own. Blobs already in the
cache with the expected size are used again without a download.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx

from lmaas.errors import RequestTooLargeError
from lmaas.store.blobs import BlobStore, normalize_digest
from lmaas.store.folder import FolderFile
from lmaas.store.materialize import FolderCache

log = logging.getLogger(__name__)

BLOB_ROUTE = "/internal/blobs/"
_CHUNK = 1 << 20


class BlobFetchError(RuntimeError):
    """A blob could not be fetched, or its bytes were not what its digest says."""


@dataclass(frozen=True, slots=True)
class Source:
    """Where a node fetches blobs: the gateway's URL and the token its blob route takes."""

    url: str
    token: str
    timeout: float = 60.0


class NodeCache:
    """Model files on this node, under ``root`` (created on first use)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = BlobStore(root)
        self.folders = FolderCache(root / "models", self.blobs)

    def model_path(
        self,
        source: Source,
        fmt: Literal["gguf", "hf"] | None,
        digest: str,
        files: Sequence[FolderFile],
        client: httpx.Client | None = None,
    ) -> Path:
        """The model's file (GGUF) or folder (Hugging Face) on this node, fetched as needed."""
        with client or httpx.Client(timeout=source.timeout) as http:
            for file in files:
                self.ensure_blob(source, file.digest, file.size, http)
        if fmt == "hf":
            return self.folders.ensure(digest, files)
        return self.blobs.path_for(digest)

    def ensure_blob(
        self,
        source: Source,
        digest: str,
        size: int | None,
        http: httpx.Client,
        *,
        max_bytes: int = 0,
    ) -> Path:
        """The blob ``digest`` of ``size`` bytes in the cache, downloaded when it is not
        (``size`` None: not known, as for a folder's manifest; at most ``max_bytes`` then)."""
        digest = normalize_digest(digest)
        if self.blobs.check(digest, size) is None:
            return self.blobs.path_for(digest)
        url = f"{source.url.rstrip('/')}{BLOB_ROUTE}{digest.removeprefix('sha256:')}"
        headers = {"Authorization": f"Bearer {source.token}"}
        try:
            with http.stream("GET", url, headers=headers) as response:
                if response.status_code != 200:
                    response.read()
                    raise BlobFetchError(
                        f"fetching blob {digest} from {source.url} answered "
                        f"{response.status_code}: {response.text[:300]}"
                    )
                limit = size if size is not None else max_bytes
                info = self.blobs.write(_chunks(response), max_bytes=limit)
        except httpx.HTTPError as exc:
            raise BlobFetchError(f"fetching blob {digest} from {source.url}: {exc}") from exc
        except RequestTooLargeError as exc:  # more bytes than the blob has
            raise BlobFetchError(f"blob {digest} from {source.url}: {exc.message}") from exc
        if info.digest != digest or (size is not None and info.size != size):
            # Stored under the digest of what arrived, never under the one asked for; a blob
            # that was already in the cache under that digest is a good one and stays.
            if info.created:
                self.blobs.delete(info.digest)
            raise BlobFetchError(
                f"blob {digest} from {source.url} arrived as {info.size} bytes hashing to "
                f"{info.digest}; discarded"
            )
        log.info("fetched blob %s (%d bytes) from %s", digest, info.size, source.url)
        return info.path


def _chunks(response: httpx.Response) -> Iterator[bytes]:
    yield from response.iter_bytes(_CHUNK)
