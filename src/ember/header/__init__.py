"""The E2B-compatible build header: bytes <-> records and the mapping algebra. No I/O."""

from ember.header.algebra import (
    identity_mapping_from_bitmap,
    mapping_from_bitmap,
    merge_mappings,
    normalize_mappings,
    validate_mappings,
)
from ember.header.codec import deserialize_header, serialize_header
from ember.header.diff import DiffMetadata
from ember.header.frames import BuildData, CompressionType, Frame, FrameTable
from ember.header.header import Header, check_can_derive, empty_device_header
from ember.header.layout import RECORD_BYTES
from ember.header.model import (
    DATA_BLOCK_SIZES,
    HUGEPAGE_SIZE,
    MAX_DEVICE_SIZE,
    NIL_UUID,
    PAGE_SIZE,
    ROOTFS_BLOCK_SIZE,
    Mapping,
    Metadata,
    Resolved,
    check_data_block_size,
)
from ember.header.table import MappingTable
from ember.header.v4 import MAX_UNCOMPRESSED_HEADER_BYTES
from ember.header.visualize import format_mapping, visualize

__all__ = [
    "DATA_BLOCK_SIZES",
    "HUGEPAGE_SIZE",
    "MAX_DEVICE_SIZE",
    "MAX_UNCOMPRESSED_HEADER_BYTES",
    "NIL_UUID",
    "PAGE_SIZE",
    "RECORD_BYTES",
    "ROOTFS_BLOCK_SIZE",
    "BuildData",
    "CompressionType",
    "DiffMetadata",
    "Frame",
    "FrameTable",
    "Header",
    "Mapping",
    "MappingTable",
    "Metadata",
    "Resolved",
    "check_can_derive",
    "check_data_block_size",
    "deserialize_header",
    "empty_device_header",
    "format_mapping",
    "identity_mapping_from_bitmap",
    "mapping_from_bitmap",
    "merge_mappings",
    "normalize_mappings",
    "serialize_header",
    "validate_mappings",
    "visualize",
]
