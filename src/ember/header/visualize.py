"""Debug renderings of mappings, matching the upstream inspection tools character for character.

``format_mapping`` line (Go ``%-14s [%11d,%11d) := [%11d,%11d) ⊂ %s, %d B``)::

    startBlock-endBlock (left-aligned, padded to 14)  [device start, device end) :=
    [storage start, storage end) ⊂ <build uuid>, <length> B

``visualize`` draws one character per block of ``block_size`` (``size // block_size`` blocks),
wrapped at ``cols`` per line: ``░`` by default, ``▓`` for builds in the bottom group, ``█`` for
builds in the top group (drawn after the bottom group, so it wins).
"""

from __future__ import annotations

import uuid
from collections.abc import Collection

from ember.errors import UsageError
from ember.header.model import Mapping
from ember.header.table import MappingTable

SKIPPED_BLOCK = "░"
BOTTOM_BLOCK = "▓"
TOP_BLOCK = "█"
MAX_GRID_BLOCKS = 1 << 24
_CODES = {SKIPPED_BLOCK: b"s", BOTTOM_BLOCK: b"b", TOP_BLOCK: b"t"}
_GLYPHS = str.maketrans({code.decode(): glyph for glyph, code in _CODES.items()})


def format_mapping(mapping: Mapping, block_size: int) -> str:
    blocks = f"{mapping.offset // block_size}-{mapping.end // block_size}"
    return (
        f"{blocks:<14} [{mapping.offset:11d},{mapping.end:11d}) := "
        f"[{mapping.storage_offset:11d},{mapping.storage_offset + mapping.length:11d}) "
        f"⊂ {mapping.build_id}, {mapping.length} B"
    )


def visualize(
    table: MappingTable,
    size: int,
    block_size: int,
    cols: int,
    bottom_group: Collection[uuid.UUID] | None = None,
    top_group: Collection[uuid.UUID] | None = None,
) -> str:
    """The block grid of ``table``; blocks past ``size`` are not drawn.

    One byte per block while drawing (a list of characters would cost 8), and at most
    ``MAX_GRID_BLOCKS`` blocks: a 16 TiB device of 4 KiB blocks would be 4 Gi characters.
    """
    if block_size <= 0 or cols <= 0:
        raise UsageError(f"block size ({block_size}) and columns ({cols}) must both be positive")
    blocks = size // block_size
    if blocks > MAX_GRID_BLOCKS:
        raise UsageError(
            f"the {size}-byte device has {blocks} blocks of {block_size} bytes, too many to draw one "
            f"character each (at most {MAX_GRID_BLOCKS}): leave out -visualize"
        )
    grid = bytearray(_CODES[SKIPPED_BLOCK] * blocks)
    bottom = set(bottom_group or ())
    top = set(top_group or ())
    for mapping in table:
        if mapping.build_id in top:
            mark = _CODES[TOP_BLOCK]
        elif mapping.build_id in bottom:
            mark = _CODES[BOTTOM_BLOCK]
        else:
            continue
        first = min(mapping.offset // block_size, blocks)
        last = min(first + mapping.length // block_size, blocks)
        grid[first:last] = mark * (last - first)
    text = grid.decode("ascii").translate(_GLYPHS)
    return "\n".join(text[i : i + cols] for i in range(0, len(text), cols))
