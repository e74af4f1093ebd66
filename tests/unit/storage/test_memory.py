from __future__ import annotations

from ember.storage import MemoryStorage, open_memory_storage

KEY = "2b3c4d5e-6f70-4812-9a3b-4c5d6e7f8091/memfile"


def test_a_stored_object_does_not_change_when_the_caller_reuses_its_buffer() -> None:
    storage = MemoryStorage("copy")
    buffer = bytearray(b"before")
    storage.put(KEY, buffer)  # type: ignore[arg-type]
    buffer[:] = b"after!"
    assert storage.get(KEY) == b"before"


def test_named_stores_are_shared_and_distinct_names_are_isolated() -> None:
    open_memory_storage("shared-a").put(KEY, b"a")
    assert open_memory_storage("shared-a").get(KEY) == b"a"
    assert not open_memory_storage("shared-b").exists(KEY)
    assert open_memory_storage("shared-a").url == "memory://shared-a"
