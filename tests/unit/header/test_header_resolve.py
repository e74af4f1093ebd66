"""Header construction and offset resolution (strict from v3, lenient before)."""

from __future__ import annotations

import logging
import uuid

import numpy as np
import pytest

from ember.errors import HeaderError, MappingError
from ember.header import (
    NIL_UUID,
    PAGE_SIZE,
    Header,
    Mapping,
    MappingTable,
    Metadata,
    Resolved,
)

A = uuid.UUID(int=0xA)
C = uuid.UUID(int=0xC)
P = PAGE_SIZE


def make(version: int, mappings: list[Mapping], size: int = 6 * P) -> Header:
    return Header(Metadata(version, P, size, 1, C, A), MappingTable.from_records(mappings))


CHAIN = [Mapping(0, 2 * P, A, 10 * P), Mapping(2 * P, P, NIL_UUID, 0), Mapping(3 * P, 3 * P, C, 0)]


@pytest.mark.parametrize(
    ("offset", "expected"),
    [
        (0, Resolved(A, 10 * P, 2 * P)),
        (P, Resolved(A, 11 * P, P)),
        (2 * P, Resolved(NIL_UUID, 0, P)),
        (5 * P, Resolved(C, 2 * P, P)),
    ],
)
def test_resolve_shifts_into_the_covering_mapping(offset: int, expected: Resolved) -> None:
    assert make(3, CHAIN).resolve(offset) == expected


@pytest.mark.parametrize("offset", [-P, 6 * P, 100])
def test_strict_headers_reject_out_of_range_and_unaligned_offsets(offset: int) -> None:
    with pytest.raises(MappingError):
        make(3, CHAIN).resolve(offset)


def test_strict_headers_reject_offsets_in_a_gap() -> None:
    header = make(3, [Mapping(0, P, A, 0), Mapping(2 * P, 4 * P, A, P)])
    with pytest.raises(MappingError, match="beyond the end of the mapping"):
        header.resolve(P)


def test_lenient_headers_log_and_return_zero_length_past_a_mapping(caplog: pytest.LogCaptureFixture) -> None:
    header = make(2, [Mapping(0, P, A, 0)], size=2 * P)
    with caplog.at_level(logging.WARNING):
        assert header.resolve(P) == Resolved(A, P, 0)
    assert "tolerated" in caplog.text


def test_offset_before_first_mapping_has_no_source_even_when_lenient() -> None:
    with pytest.raises(MappingError, match="no source"):
        make(1, [Mapping(P, P, A, 0)]).resolve(0)


def test_resolve_many_matches_resolve_for_every_page() -> None:
    header = make(3, CHAIN)
    offsets = np.arange(6, dtype=np.uint64) * P
    index, storage, lengths = header.resolve_many(offsets)
    got = [
        Resolved(header.mappings.builds[i], s, n)
        for i, s, n in zip(index.tolist(), storage.tolist(), lengths.tolist(), strict=True)
    ]
    assert got == [header.resolve(int(o)) for o in offsets]


def test_resolve_many_is_strict_like_resolve() -> None:
    with pytest.raises(MappingError):
        make(3, CHAIN).resolve_many(np.array([0, 6 * P]))
    with pytest.raises(MappingError):
        make(3, CHAIN).resolve_many(np.array([-P]))


def test_header_without_mappings_gets_the_default_mapping() -> None:
    assert make(3, [], size=P + 1).mappings.records() == [Mapping(0, 2 * P, C, 0)]


def test_unaligned_mapping_is_rejected_at_construction() -> None:
    with pytest.raises(MappingError, match="not block-aligned"):
        make(3, [Mapping(0, 100, A, 0)])


def test_referenced_builds_skip_nil_in_first_appearance_order() -> None:
    header = make(
        3,
        [
            Mapping(0, P, C, 0),
            Mapping(P, P, NIL_UUID, 0),
            Mapping(2 * P, P, A, 0),
            Mapping(3 * P, 3 * P, C, P),
        ],
    )
    assert header.referenced_builds() == (C, A)


def test_legacy_header_covers_the_whole_object_from_its_build() -> None:
    header = Header.legacy(A, 10 * P, 2 * 1024 * 1024)
    assert header.metadata == Metadata(1, 2 * 1024 * 1024, 10 * P, 1, A, A)
    assert header.mappings.records() == [Mapping(0, 10 * P, A, 0)]
    assert header.resolve(3 * P) == Resolved(A, 3 * P, 7 * P)


def test_template_metadata_is_version_3_generation_0_own_base() -> None:
    assert Metadata.new_template(A, P, 8 * P) == Metadata(3, P, 8 * P, 0, A, A)


def test_next_generation_inherits_everything_but_build_and_generation() -> None:
    parent = Metadata(4, P, 8 * P, 41, C, A)
    assert parent.next_generation(NIL_UUID) == Metadata(4, P, 8 * P, 42, NIL_UUID, A)


def test_metadata_rejects_zero_block_size_and_negative_fields() -> None:
    with pytest.raises(HeaderError, match="block size cannot be zero"):
        Metadata(3, 0, P, 0, A, A)
    with pytest.raises(HeaderError, match="unsigned 64-bit"):
        Metadata(3, P, -1, 0, A, A)
