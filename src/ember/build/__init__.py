"""Builds as a whole: metadata.json, layered reads across a build chain, copying and storing a build."""

from ember.build.copy import (
    DEFAULT_WORKERS,
    CopyEvent,
    CopyReport,
    CopyStarted,
    FileFinished,
    FileStarted,
    copy_build,
    referenced_objects,
)
from ember.build.metadata import (
    Context,
    FromTemplate,
    MemoryPrefetch,
    Start,
    TemplateInfo,
    TemplateMetadata,
    parse_metadata,
)
from ember.build.reader import BuildFile
from ember.build.upload import BuildArtifacts, upload_build

__all__ = [
    "DEFAULT_WORKERS",
    "BuildArtifacts",
    "BuildFile",
    "Context",
    "CopyEvent",
    "CopyReport",
    "CopyStarted",
    "FileFinished",
    "FileStarted",
    "FromTemplate",
    "MemoryPrefetch",
    "Start",
    "TemplateInfo",
    "TemplateMetadata",
    "copy_build",
    "parse_metadata",
    "referenced_objects",
    "upload_build",
]
