"""The NBD server against real clients: nbdinfo, nbdcopy, qemu-io, qemu-img."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from nbd_disks import FileDisk, need, run

from ember.nbd import NbdServerThread

SIZE = 16 << 20


@pytest.fixture
def image() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="nbd-it-", dir="/tmp") as tmp:
        path = Path(tmp) / "disk.img"
        path.write_bytes(bytes(range(256)) * (SIZE // 256))
        yield path


@pytest.fixture
def server(image: Path) -> Iterator[NbdServerThread]:
    disk = FileDisk(image)
    try:
        with NbdServerThread(disk, image.parent / "s.sock", ("127.0.0.1", 0)) as running:
            yield running
            assert running.unhandled_errors == ()
    finally:
        disk.close()


def test_nbdinfo_reports_size_block_sizes_and_capabilities(server: NbdServerThread) -> None:
    need("nbdinfo")
    info = json.loads(run("nbdinfo", "--json", server.url))
    export = info["exports"][0]
    assert export["export-size"] == SIZE
    assert (export["block_size_minimum"], export["block_size_preferred"], export["block_size_maximum"]) == (
        1,
        4096,
        32 << 20,
    )
    assert export["can_trim"] and export["can_zero"] and export["can_flush"] and export["can_multi_conn"]
    assert not export["is_read_only"]


def test_nbdinfo_lists_the_export_and_works_over_tcp(server: NbdServerThread) -> None:
    need("nbdinfo")
    listing = json.loads(run("nbdinfo", "--json", "--list", server.url))
    assert [export["export-name"] for export in listing["exports"]] == [""]
    assert run("nbdinfo", "--size", server.tcp_url).strip() == str(SIZE)


def test_nbdcopy_out_is_byte_identical(server: NbdServerThread, image: Path) -> None:
    need("nbdcopy")
    copy = image.parent / "copy.img"
    run("nbdcopy", server.url, str(copy))
    assert copy.read_bytes() == image.read_bytes()


def test_nbdcopy_in_lands_the_writes(server: NbdServerThread, image: Path) -> None:
    need("nbdcopy")
    source = image.parent / "source.img"
    source.write_bytes(bytes([0x5A]) * SIZE)
    run("nbdcopy", str(source), server.url)
    assert image.read_bytes() == source.read_bytes()


def test_qemu_io_writes_a_pattern_and_reads_it_back(server: NbdServerThread, image: Path) -> None:
    need("qemu-io")
    output = run("qemu-io", "-f", "raw", "-c", "write -P 0xab 0 1M", "-c", "read -P 0xab 0 1M", server.url)
    assert "Pattern verification failed" not in output
    assert image.read_bytes()[: 1 << 20] == b"\xab" * (1 << 20)


def test_qemu_io_discard_and_write_zeroes_zero_the_ranges(server: NbdServerThread, image: Path) -> None:
    need("qemu-io")
    run("qemu-io", "-f", "raw", "-c", "discard 0 64k", "-c", "write -z 1M 128k", server.url)
    data = image.read_bytes()
    assert data[: 64 << 10] == bytes(64 << 10)
    assert data[1 << 20 : (1 << 20) + (128 << 10)] == bytes(128 << 10)
    assert data[64 << 10 : 128 << 10] == (bytes(range(256)) * 256)


def test_qemu_img_info_and_convert(server: NbdServerThread, image: Path) -> None:
    need("qemu-img")
    info = json.loads(run("qemu-img", "info", "--output=json", server.url))
    assert info["virtual-size"] == SIZE
    converted = image.parent / "converted.raw"
    run("qemu-img", "convert", "-f", "raw", "-O", "raw", server.tcp_url, str(converted))
    assert converted.read_bytes() == image.read_bytes()


def test_concurrent_clients_each_get_the_whole_disk(server: NbdServerThread, image: Path) -> None:
    need("nbdcopy")
    targets = [image.parent / f"c{i}.img" for i in range(4)]
    urls = [server.url, server.tcp_url] * 2
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda pair: run("nbdcopy", pair[0], str(pair[1])), zip(urls, targets, strict=True)))
    expected = image.read_bytes()
    assert all(target.read_bytes() == expected for target in targets)
