"""File names inside a model folder: the normal form, hostile names, layouts, manifests."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from lmaas.errors import InvalidRequestError
from lmaas.store.folder import (
    FolderFile,
    LayoutChecker,
    check_layout,
    extract_tar,
    is_pickle_name,
    is_root,
    manifest_bytes,
    member_path,
    parse_manifest,
    tar_chunks,
    tar_length,
)
from lmaas.store.hf import parse_disposition

DIGEST = "sha256:" + "ab" * 32

HOSTILE = [
    ("empty", ""),
    ("only dots", "./."),
    ("only slashes", "//"),
    ("parent", ".."),
    ("parent at start", "../config.json"),
    ("parent inside", "a/../../config.json"),
    ("parent at end", "a/.."),
    ("absolute", "/etc/passwd"),
    ("absolute double", "//etc/passwd"),
    ("backslash traversal", "..\\..\\config.json"),
    ("backslash", "a\\b.json"),
    ("drive letter", "C:/Windows/x.json"),
    ("drive relative", "C:x.json"),
    ("colon stream", "config.json:evil"),
    ("url dots", "%2e%2e/config.json"),
    ("url slash", "..%2fconfig.json"),
    ("url upper", "%2E%2E%2Fx"),
    ("double encoded", "%252e%252e/x"),
    ("nul", "config.json\x00.txt"),
    ("newline", "config\n.json"),
    ("tab", "a\tb"),
    ("escape", "\x1b[31m.json"),
    ("delete char", "a\x7f"),
    ("fullwidth dots", "\uff0e\uff0e/x"),
    ("rtl override", "model\u202egnp.json"),
    ("non-ascii", "modèle.json"),
    ("trailing dot", "config.json."),
    ("trailing space", "config.json "),
    ("leading space", " config.json"),
    ("three dots", ".../x"),
    ("device", "con.json"),
    ("device upper", "sub/NUL"),
    ("com port", "COM1.txt"),
    ("wildcard", "*.json"),
    ("question", "a?.json"),
    ("pipe", "a|b"),
    ("quote", 'a"b'),
    ("angle", "a<b>"),
    ("too long", "a" * 256),
    ("long component", "a" * 129 + "/x"),
    ("too deep", "/".join("d" * 9) + "/x"),
]


@pytest.mark.parametrize(("name",), [(n,) for _, n in HOSTILE], ids=[i for i, _ in HOSTILE])
def test_hostile_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        member_path(name)
    assert info.value.status_code == 400 and info.value.param == "path"


@pytest.mark.parametrize(
    ("name", "root"),
    [
        (".", True),
        ("./", True),
        ("./.", True),
        ("/", False),
        ("", False),
        ("a", False),
        ("./a", False),
    ],
)
def test_root_entries(name: str, root: bool) -> None:
    assert is_root(name) is root


def test_non_text_names_are_refused() -> None:
    with pytest.raises(InvalidRequestError):
        member_path(b"config.json")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "normal"),
    [
        ("config.json", "config.json"),
        ("./config.json", "config.json"),
        ("1_Pooling/config.json", "1_Pooling/config.json"),
        ("./1_Pooling//config.json", "1_Pooling/config.json"),
        ("a/./b.txt", "a/b.txt"),
        ("dir/", "dir"),
        (".gitattributes", ".gitattributes"),
        ("model-00001-of-00002.safetensors", "model-00001-of-00002.safetensors"),
        ("sub dir/file (1).txt", "sub dir/file (1).txt"),
        ("console.json", "console.json"),  # a device name only as a whole stem
        ("/".join("d" * 7) + "/x", "/".join("d" * 7) + "/x"),
    ],
)
def test_friendly_names_have_a_normal_form(name: str, normal: str) -> None:
    assert member_path(name) == normal
    assert member_path(normal) == normal


@pytest.mark.parametrize(
    ("name", "pickle"),
    [
        ("pytorch_model.bin", True),
        ("sub/model.PT", True),
        ("x.pth", True),
        ("x.pkl", True),
        ("x.pickle", True),
        ("x.ckpt", True),
        ("model.safetensors", False),
        ("binary.txt", False),
    ],
)
def test_pickle_names(name: str, pickle: bool) -> None:
    assert is_pickle_name(name) is pickle


@pytest.mark.parametrize(
    "paths",
    [
        ["config.json", "config.json"],
        ["Config.json", "config.JSON"],
        ["a", "a/b"],
        ["a/b", "a"],
        ["A/b", "a"],
    ],
)
def test_layout_refuses_clashes(paths: list[str]) -> None:
    with pytest.raises(InvalidRequestError):
        check_layout(paths)


def test_layout_allows_directories_twice_and_siblings() -> None:
    layout = LayoutChecker()
    layout.add_dir("a")
    layout.add_dir("a")
    layout.add_file("a/b")
    layout.add_file("a/c")
    with pytest.raises(InvalidRequestError):
        layout.add_dir("a/b")


def test_manifest_round_trip_is_canonical() -> None:
    files = [FolderFile("b/x.json", DIGEST, 3), FolderFile("a.json", DIGEST, 0)]
    data = manifest_bytes(files)
    assert data == manifest_bytes(list(reversed(files)))
    assert parse_manifest(data) == sorted(files, key=lambda f: f.path)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"format": "gguf", "files": []}',
        b'{"format": "hf"}',
        b'{"format": "hf", "files": [{"path": "../x", "digest": "%s", "size": 1}]}',
        b'{"format": "hf", "files": [{"path": "./x", "digest": "%s", "size": 1}]}',
        b'{"format": "hf", "files": [{"path": "x", "digest": "sha256:zz", "size": 1}]}',
        b'{"format": "hf", "files": [{"path": "x", "digest": "%s", "size": -1}]}',
        b'{"format": "hf", "files": [{"path": "x", "digest": "%s", "size": true}]}',
        b'{"format": "hf", "files": [{"path": "x", "digest": "%s", "size": 1},'
        b' {"path": "x", "digest": "%s", "size": 1}]}',
    ],
)
def test_bad_manifests_are_refused(body: bytes) -> None:
    body = body.replace(b"%s", DIGEST.encode())
    with pytest.raises(InvalidRequestError):
        parse_manifest(body)


def test_tar_chunks_is_a_tar_of_the_announced_length() -> None:
    files = {"config.json": b"{}", "sub/" + "n" * 150 + ".txt": b"x" * 1000, "empty": b""}
    entries = [(p, len(d), lambda d=d: io.BytesIO(d)) for p, d in files.items()]
    data = b"".join(tar_chunks(entries))  # type: ignore[arg-type]
    assert len(data) == tar_length((p, len(d)) for p, d in files.items())
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        got = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    assert got == files


def test_tar_chunks_refuses_a_file_that_changed_size() -> None:
    entries = [("a", 5, lambda: io.BytesIO(b"abc"))]
    with pytest.raises(OSError):
        b"".join(tar_chunks(entries))  # type: ignore[arg-type]


def test_extract_tar_writes_only_normal_paths(tmp_path: Path) -> None:
    files = {"config.json": b"{}", "1_Pooling/config.json": b"[]"}
    entries = [(p, len(d), lambda d=d: io.BytesIO(d)) for p, d in files.items()]
    stream = io.BytesIO(b"".join(tar_chunks(entries)))  # type: ignore[arg-type]
    got = extract_tar(stream, tmp_path)
    assert {f.path for f in got} == set(files)
    assert (tmp_path / "1_Pooling" / "config.json").read_bytes() == b"[]"

    bad = io.BytesIO()
    with tarfile.open(fileobj=bad, mode="w") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    bad.seek(0)
    target = tmp_path / "second"
    target.mkdir()
    with pytest.raises(InvalidRequestError):
        extract_tar(bad, target)
    assert not (tmp_path / "escape.txt").exists()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('form-data; name="file"; filename="a/b.json"', {"name": "file", "filename": "a/b.json"}),
        ("form-data; name=file; filename=x.txt", {"name": "file", "filename": "x.txt"}),
        (r'form-data; filename="a\"b"', {"filename": 'a"b'}),
        (r'form-data; filename="..\\x"', {"filename": "..\\x"}),
        ('form-data; filename="semi;colon"', {"filename": "semi;colon"}),
        ("form-data", {}),
    ],
)
def test_content_disposition(header: str, expected: dict[str, str]) -> None:
    assert parse_disposition(header) == expected


@pytest.mark.parametrize(
    "header",
    [
        "form-data; filename*=UTF-8''..%2Fx",
        'form-data; filename="unterminated',
        'form-data; filename="a"junk',
        "form-data; novalue",
    ],
)
def test_bad_content_disposition(header: str) -> None:
    with pytest.raises(InvalidRequestError):
        parse_disposition(header)
