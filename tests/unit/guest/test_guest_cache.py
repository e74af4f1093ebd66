from __future__ import annotations

from pathlib import Path

from ember.guest import cache_dir
from ember.guest.cache import publish


def test_cache_dir_defaults_outside_the_repo_and_follows_the_variable() -> None:
    assert cache_dir({}) == Path("/var/cache/ember")
    assert cache_dir({"EMBER_CACHE_DIR": "/srv/ember-cache"}) == Path("/srv/ember-cache")


def test_publishing_over_an_existing_artefact_keeps_the_first_and_drops_the_temporary(tmp_path: Path) -> None:
    final = tmp_path / "kernel"
    final.mkdir()
    (final / "vmlinuz").write_bytes(b"first")
    temporary = tmp_path / ".kernel.tmp"
    temporary.mkdir()
    (temporary / "vmlinuz").write_bytes(b"second")
    assert publish(temporary, final) == final
    assert (final / "vmlinuz").read_bytes() == b"first"
    assert not temporary.exists()


def test_publishing_a_file_renames_it_into_place(tmp_path: Path) -> None:
    temporary = tmp_path / ".image.tmp"
    temporary.write_bytes(b"cpio")
    assert publish(temporary, tmp_path / "image").read_bytes() == b"cpio"
    assert not temporary.exists()
