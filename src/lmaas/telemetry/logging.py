"""Logging setup and the structured (JSON) access log."""

from __future__ import annotations

import json
import logging
import re
import sys
import uuid
from typing import Any

ACCESS_LOGGER = "lmaas.access"
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    access = logging.getLogger(ACCESS_LOGGER)
    access.propagate = False
    access_handler = logging.StreamHandler(sys.stderr)
    access_handler.setFormatter(logging.Formatter("%(message)s"))
    access.handlers[:] = [access_handler]
    access.setLevel(logging.INFO)


def new_request_id() -> str:
    return uuid.uuid4().hex


def accept_request_id(header: str | None) -> str:
    """The client's ``X-Request-ID`` if it is a sane token, else a fresh id."""
    if header and _REQUEST_ID_OK.match(header):
        return header
    return new_request_id()


def log_access(fields: dict[str, Any]) -> None:
    logging.getLogger(ACCESS_LOGGER).info(json.dumps(fields, separators=(",", ":")))
