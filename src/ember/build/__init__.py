"""Builds as a whole: metadata.json, layered reads across a build chain, copying and storing a build."""

from ember.build.copy import (
    DEFAULT_WORKERS,
    CopyEvent,
    CopyReport,
    CopyStarted,
    FileFinished,
    FileStarted,
    StaleTemporaryRemoved,
    copy_build,
    referenced_objects,
)
from ember.build.gc import (
    BuildDeleted,
    BuildFailed,
    BuildSkipped,
    DeletableBuild,
    GcEvent,
    GcPlan,
    GcReport,
    KeepKind,
    KeptBuild,
    apply_gc,
    plan_gc,
)
from ember.build.integrity import DataCheck, DataRequirement, check_data_objects, data_requirements
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
from ember.build.retry import READ_RETRY_DELAYS_S, read_with_retries
from ember.build.upload import BuildArtifacts, claim_build, upload_build

__all__ = [
    "DEFAULT_WORKERS",
    "READ_RETRY_DELAYS_S",
    "BuildArtifacts",
    "BuildDeleted",
    "BuildFailed",
    "BuildFile",
    "BuildSkipped",
    "Context",
    "CopyEvent",
    "CopyReport",
    "CopyStarted",
    "DataCheck",
    "DataRequirement",
    "DeletableBuild",
    "FileFinished",
    "FileStarted",
    "FromTemplate",
    "GcEvent",
    "GcPlan",
    "GcReport",
    "KeepKind",
    "KeptBuild",
    "MemoryPrefetch",
    "StaleTemporaryRemoved",
    "Start",
    "TemplateInfo",
    "TemplateMetadata",
    "apply_gc",
    "check_data_objects",
    "claim_build",
    "copy_build",
    "data_requirements",
    "parse_metadata",
    "plan_gc",
    "read_with_retries",
    "referenced_objects",
    "upload_build",
]
