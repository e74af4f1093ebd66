"""ember: builds, lazy resumes and diff pauses of microVM sandboxes, compatible with E2B's orchestrator."""

from ember.errors import (
    BuildError,
    EmberError,
    HeaderError,
    MappingError,
    MetadataError,
    ObjectNotFound,
    StorageError,
    StorageUnreachable,
    UsageError,
)

__version__ = "0.1.0"

__all__ = [
    "BuildError",
    "EmberError",
    "HeaderError",
    "MappingError",
    "MetadataError",
    "ObjectNotFound",
    "StorageError",
    "StorageUnreachable",
    "UsageError",
    "__version__",
]
