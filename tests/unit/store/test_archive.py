"""The tar and zip readers: members as streams, links and special files refused, declared
lengths bounded before they are read."""

from __future__ import annotations

import io
import stat
import struct
import tarfile
import zipfile

import pytest

from lmaas.errors import InvalidRequestError
from lmaas.store.archive import (
    MAX_EXTENDED_HEADER,
    CountingFile,
    Gunzip,
    TarReader,
    open_maybe_gzip,
    zip_members,
)
from tests.hf_folder import tar_bytes, tar_member, tar_with, zip_bytes

FILES = {"config.json": b"{}", "sub/vocab.txt": b"a\nb\n" * 1000, "empty.txt": b""}


def read_tar(data: bytes) -> dict[str, bytes]:
    stream = open_maybe_gzip(io.BufferedReader(io.BytesIO(data)))  # type: ignore[arg-type]
    return {m.name: b"".join(m.chunks()) for m in TarReader(stream).members() if m.kind == "file"}


@pytest.mark.parametrize("gz", [False, True])
def test_tar_members_stream_out(gz: bool) -> None:
    assert read_tar(tar_bytes(FILES, gz=gz)) == FILES


def test_unread_members_are_skipped() -> None:
    stream = io.BytesIO(tar_bytes(FILES))
    names = [m.name for m in TarReader(stream).members()]
    assert names == list(FILES)


def test_long_names_from_pax_and_gnu_headers() -> None:
    long = "d/" * 60 + "config.json"
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
            info = tarfile.TarInfo(long)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"{}"))
        assert read_tar(buffer.getvalue()) == {long: b"{}"}


def test_directories_are_reported_as_such() -> None:
    data = tar_with(tar_member("sub", tarfile.DIRTYPE), files={"sub/a": b"1"})
    members = [(m.name, m.kind) for m in TarReader(io.BytesIO(data)).members()]
    assert members == [("sub/a", "file"), ("sub/", "dir")]


@pytest.mark.parametrize(
    ("member", "words"),
    [
        (tar_member("evil", tarfile.SYMTYPE, link="/etc/passwd"), "symbolic link"),
        (tar_member("evil", tarfile.SYMTYPE, link="../../x"), "symbolic link"),
        (tar_member("evil", tarfile.LNKTYPE, link="/etc/shadow"), "hard link"),
        (tar_member("evil", tarfile.CHRTYPE), "character device"),
        (tar_member("evil", tarfile.BLKTYPE), "block device"),
        (tar_member("evil", tarfile.FIFOTYPE), "fifo"),
        (tar_member("evil", tarfile.GNUTYPE_SPARSE), "sparse"),
        (tar_member("evil", b"Z"), "unsupported"),
    ],
)
def test_links_and_special_files_are_refused(member: tarfile.TarInfo, words: str) -> None:
    data = tar_with(member, files={"config.json": b"{}"})
    with pytest.raises(InvalidRequestError) as info:
        read_tar(data)
    assert words in info.value.message


def _header(name: bytes, size: int, kind: bytes) -> bytes:
    block = bytearray(512)
    block[0 : len(name)] = name
    block[100:108] = b"0000644\0"
    block[124:136] = f"{size:011o}\0".encode()
    block[156:157] = kind
    block[257:263] = b"ustar\0"
    block[148:156] = b" " * 8
    block[148:156] = f"{sum(block):06o}\0 ".encode()
    return bytes(block)


def test_a_huge_extended_header_is_refused_before_it_is_read() -> None:
    # The header claims far more than is sent: refused on the claim, nothing allocated.
    data = _header(b"././@PaxHeader", MAX_EXTENDED_HEADER + 1, b"x") + bytes(512)
    with pytest.raises(InvalidRequestError, match="extended tar header"):
        read_tar(data)
    data = _header(b"././@LongLink", 1 << 40, b"L")
    with pytest.raises(InvalidRequestError, match="extended tar header"):
        read_tar(data)


@pytest.mark.parametrize(
    "data",
    [
        b"not a tar archive at all" * 30,
        _header(b"config.json", 100, b"0")[:-1] + b"X",  # bad checksum
        _header(b"config.json", 100, b"0") + b"{}",  # truncated data
        _header(b"config.json", 0, b"0")[:300],  # truncated header
        _header(b"././@PaxHeader", 12, b"x") + b"bad record\n".ljust(512, b"\0"),
        _header(b"././@PaxHeader", 20, b"x") + b"99 path=x\n".ljust(512, b"\0"),
        _header(b"././@PaxHeader", 30, b"x") + b"30 GNU.sparse.map=0,1\n".ljust(512, b"\0"),
        _header(b"\xff\xfe", 0, b"0"),  # not UTF-8
    ],
)
def test_malformed_tars_are_refused(data: bytes) -> None:
    with pytest.raises(InvalidRequestError):
        read_tar(data)


def test_corrupt_gzip_is_refused() -> None:
    data = bytearray(tar_bytes(FILES, gz=True))
    data[-6] ^= 0xFF  # the CRC
    with pytest.raises(InvalidRequestError):
        stream = open_maybe_gzip(io.BufferedReader(io.BytesIO(bytes(data))))  # type: ignore[arg-type]
        list(TarReader(stream).members())
        while stream.read(1 << 16):
            pass


def test_zip_members_stream_out() -> None:
    got = {
        m.name: b"".join(m.chunks())
        for m in zip_members(io.BytesIO(zip_bytes(FILES)), max_members=10)
    }
    assert got == FILES


@pytest.mark.parametrize(
    ("mode", "words"),
    [
        (stat.S_IFLNK | 0o777, "symbolic link"),
        (stat.S_IFIFO | 0o644, "only files"),
        (stat.S_IFCHR | 0o644, "only files"),
    ],
)
def test_zip_links_and_special_modes_are_refused(mode: int, words: str) -> None:
    data = zip_bytes({"config.json": b"{}", "evil": b"/etc/passwd"}, modes={"evil": mode})
    with pytest.raises(InvalidRequestError) as info:
        list(zip_members(io.BytesIO(data), max_members=10))
    assert words in info.value.message


def test_zip_names_keep_what_zipfile_cuts_at_nul() -> None:
    # zipfile cannot write such a name: write a stand-in and patch the byte in both headers.
    data = zip_bytes({"config.jsonX../../evil": b"{}"}).replace(b"jsonX", b"json\0")
    (member,) = zip_members(io.BytesIO(data), max_members=10)
    assert member.name == "config.json\0../../evil"


def test_zip_member_count_is_checked_from_the_end_record() -> None:
    data = zip_bytes({f"f{i}.txt": b"" for i in range(20)})
    with pytest.raises(InvalidRequestError, match="more than 5"):
        list(zip_members(io.BytesIO(data), max_members=5))


def test_a_zip_directory_claiming_to_be_huge_is_refused() -> None:
    data = bytearray(zip_bytes({"a": b"1"}))
    end = data.rfind(b"PK\x05\x06")
    data[end + 12 : end + 16] = struct.pack("<L", 0xFFFFFFF0)
    with pytest.raises(InvalidRequestError):
        list(zip_members(io.BytesIO(bytes(data)), max_members=10))


def test_encrypted_and_corrupt_zips_are_refused() -> None:
    data = bytearray(zip_bytes({"a": b"hello" * 100}))
    for signature, flag_offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.find(signature)
        data[at + flag_offset] |= 0x1
    with pytest.raises(InvalidRequestError, match="encrypted"):
        list(zip_members(io.BytesIO(bytes(data)), max_members=10))
    corrupt = bytearray(zip_bytes({"a": b"hello" * 100}))
    corrupt[40:50] = b"\xff" * 10
    with pytest.raises(InvalidRequestError):
        for member in zip_members(io.BytesIO(bytes(corrupt)), max_members=10):
            b"".join(member.chunks())
    for junk in (b"", b"PK", b"not a zip" * 10):
        with pytest.raises(InvalidRequestError):
            list(zip_members(io.BytesIO(junk), max_members=10))


def test_zip_lying_about_a_member_size_fails_on_read() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a", b"x" * 10_000)
    data = bytearray(buffer.getvalue())
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.find(signature)
        data[at + offset : at + offset + 4] = struct.pack("<L", 10)
    (member,) = zip_members(io.BytesIO(bytes(data)), max_members=10)
    assert member.size == 10
    with pytest.raises(InvalidRequestError):
        b"".join(member.chunks())


def test_a_gunzip_counts_the_compressed_bytes_it_read() -> None:
    data = tar_bytes({"zeros.bin": bytes(4 << 20)}, gz=True)
    stream = open_maybe_gzip(io.BufferedReader(io.BytesIO(data)))  # type: ignore[arg-type]
    assert isinstance(stream, Gunzip) and stream.compressed_bytes == 0
    unpacked = 0
    while chunk := stream.read(1 << 20):
        unpacked += len(chunk)
    assert unpacked > 4 << 20 and stream.compressed_bytes == len(data)
    plain = open_maybe_gzip(io.BufferedReader(io.BytesIO(tar_bytes(FILES))))  # type: ignore[arg-type]
    assert not isinstance(plain, Gunzip)


def test_a_counting_file_counts_what_zip_members_read() -> None:
    data = zip_bytes({"zeros.bin": bytes(4 << 20), "a.txt": b"a"})
    counted = CountingFile(io.BytesIO(data))
    unpacked = sum(len(b"".join(m.chunks())) for m in zip_members(counted, max_members=10))
    assert unpacked == (4 << 20) + 1
    # Every byte is counted at least once; the end records and the directory, read twice
    # (once to bound them, once by zipfile), are counted twice.
    assert len(data) <= counted.bytes_read < 3 * len(data)
