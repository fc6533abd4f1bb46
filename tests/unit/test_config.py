"""Settings precedence (flags > env > YAML > defaults) and cross-field checks."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from lmaas.config import (
    DEFAULT_EMBEDDING_MODEL,
    DEFAULT_MODEL,
    EngineConfig,
    ModelConfig,
    Settings,
    load_settings,
)
from lmaas.errors import InvalidRequestError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lmaas.yaml"
    path.write_text(text)
    return path


def test_defaults_serve_the_shipped_model_on_loopback() -> None:
    s = Settings()
    assert (s.host, s.port) == ("127.0.0.1", 8000)
    assert [m.name for m in s.models] == [DEFAULT_MODEL, DEFAULT_EMBEDDING_MODEL]
    assert s.models[0].resolve_path().name.endswith(".gguf")


def test_precedence_flag_over_env_over_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = write(tmp_path, "port: 7000\nlimits:\n  max_n: 3\n  max_queue: 5\n")
    assert load_settings(cfg).port == 7000
    monkeypatch.setenv("LMAAS_PORT", "7100")
    monkeypatch.setenv("LMAAS_LIMITS__MAX_N", "4")
    s = load_settings(cfg)
    assert s.port == 7100 and s.limits.max_n == 4 and s.limits.max_queue == 5
    assert load_settings(cfg, port=7200, host=None).port == 7200


def test_models_from_yaml(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    cfg = write(
        tmp_path,
        f"models:\n  - name: a\n    path: {gguf}\n    replicas: 2\n"
        "    engine:\n      max_num_seqs: 8\n      max_batch_tokens: 64\n",
    )
    (m,) = load_settings(cfg).models
    assert (m.name, m.replicas, m.engine.max_num_seqs) == ("a", 2, 8)
    assert m.resolve_path() == gguf


def test_unknown_keys_and_bad_values_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="prot"):
        load_settings(write(tmp_path, "prot: 1\n"))
    with pytest.raises(ValidationError, match="port"):
        load_settings(write(tmp_path, "port: 70000\n"))
    with pytest.raises(InvalidRequestError):
        load_settings(tmp_path / "missing.yaml")


def test_cross_field_checks_name_the_setting_to_change() -> None:
    with pytest.raises(ValidationError, match=r"engine\.context_size"):
        EngineConfig(context_size=1024, max_model_len=2048)
    with pytest.raises(ValidationError, match=r"engine\.max_batch_tokens"):
        EngineConfig(max_num_seqs=64, max_batch_tokens=32)
    with pytest.raises(ValidationError, match="duplicate"):
        Settings(models=[ModelConfig(name="a", path=Path("x")), ModelConfig(name="a")])


def test_unknown_model_without_path_says_what_exists() -> None:
    with pytest.raises(FileNotFoundError, match=DEFAULT_MODEL):
        ModelConfig(name="nope").resolve_path()


def test_tls_needs_both_files_and_the_server_settings_come_from_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(ValidationError, match="ssl_certfile and ssl_keyfile go together"):
        load_settings(None, ssl_certfile=tmp_path / "cert.pem")
    monkeypatch.setenv("LMAAS_SSL_CERTFILE", str(tmp_path / "cert.pem"))
    monkeypatch.setenv("LMAAS_SSL_KEYFILE", str(tmp_path / "key.pem"))
    monkeypatch.setenv("LMAAS_SHUTDOWN_DRAIN_SECONDS", "7")
    monkeypatch.setenv("LMAAS_METRICS__REQUIRE_KEY", "true")
    monkeypatch.setenv("LMAAS_FORWARDED_ALLOW_IPS", "10.0.0.5")
    s = load_settings(None)
    assert s.ssl_keyfile == tmp_path / "key.pem" and s.shutdown_drain_seconds == 7
    assert s.metrics.require_key and s.forwarded_allow_ips == "10.0.0.5"
