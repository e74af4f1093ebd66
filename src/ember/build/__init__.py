"""Builds as a whole: metadata.json, layered reads across a build chain, copying a build."""

from ember.build.metadata import (
    Context,
    FromTemplate,
    MemoryPrefetch,
    Start,
    TemplateInfo,
    TemplateMetadata,
    parse_metadata,
)

__all__ = [
    "Context",
    "FromTemplate",
    "MemoryPrefetch",
    "Start",
    "TemplateInfo",
    "TemplateMetadata",
    "parse_metadata",
]
