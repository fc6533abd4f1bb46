"""Key format, parsing, hashing and the pure checks around keys (no database)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from lmaas.errors import InvalidRequestError
from lmaas.gateway.auth import is_loopback
from lmaas.keys import (
    KeyInfo,
    hash_key,
    new_key,
    parse_key,
    validate_key_name,
    validate_models,
    validate_scope,
)


def test_new_key_has_the_documented_shape() -> None:
    key_id, plaintext = new_key()
    prefix, kid, secret = plaintext.split("-", 2)
    assert (prefix, kid) == ("lmaas", key_id)
    assert len(key_id) == 12 and set(key_id) <= set("0123456789abcdef")
    assert len(secret) == 43
    assert parse_key(plaintext) == key_id


def test_new_keys_are_distinct() -> None:
    keys = {new_key()[1] for _ in range(200)}
    assert len(keys) == 200


def test_hash_is_sha256_hex_of_the_whole_key() -> None:
    _, plaintext = new_key()
    assert hash_key(plaintext) == hashlib.sha256(plaintext.encode()).hexdigest()
    assert len(hash_key(plaintext)) == 64


@pytest.mark.parametrize(
    "candidate",
    [
        "",
        "unused",
        "sk-abc",
        "lmaas-",
        "lmaas-0123456789ab-",
        "lmaas-0123456789AB-" + "a" * 43,  # id is lowercase
        "lmaas-0123456789a-" + "a" * 43,  # id too short
        "lmaas-0123456789ab-" + "a" * 42,  # secret too short
        "lmaas-0123456789ab-" + "a" * 44,  # secret too long
        "lmaas-0123456789ab-" + "a" * 42 + "=",  # not URL-safe base64
        " lmaas-0123456789ab-" + "a" * 43,  # no surrounding junk
        "lmaas-0123456789ab-" + "a" * 43 + "\n",
        "LMAAS-0123456789ab-" + "a" * 43,
    ],
)
def test_parse_rejects_anything_not_exactly_a_key(candidate: str) -> None:
    assert parse_key(candidate) is None


def test_parse_accepts_dashes_and_underscores_in_the_secret() -> None:
    assert parse_key("lmaas-0123456789ab-" + "-_" * 21 + "x") == "0123456789ab"


def _info(models: tuple[str, ...] | None) -> KeyInfo:
    now = datetime.now(UTC)
    return KeyInfo("0123456789ab", "", "inference", models, now, None, None)


def test_model_restriction() -> None:
    assert _info(None).allows_model("anything")
    limited = _info(("alpha", "beta"))
    assert limited.allows_model("alpha")
    assert limited.allows_model("alpha:production")
    assert limited.allows_model("beta:3")
    assert not limited.allows_model("gamma")
    assert not limited.allows_model("alphabet")
    assert not limited.allows_model("gamma:alpha")


def test_validation() -> None:
    assert validate_scope("admin") == "admin"
    with pytest.raises(InvalidRequestError):
        validate_scope("root")
    with pytest.raises(InvalidRequestError):
        validate_key_name("x" * 129)
    with pytest.raises(InvalidRequestError):
        validate_key_name("bad\nname")
    assert validate_models(None) is None
    assert validate_models(["b", "a", "b"]) == ("a", "b")
    for bad in ([], ["../x"], ["a b"], "alpha"):
        with pytest.raises(InvalidRequestError):
            validate_models(bad)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("192.168.1.5", False),
        ("example.com", False),
        ("localhost.example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
