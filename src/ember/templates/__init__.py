"""Templates: a source (an OCI image or another template) plus steps, built layer by layer into builds.

``build_template`` runs on a node: each step is a layer build made by resuming the previous
layer, running the step through envd and pausing; layers are cached by the hash of their
parent and step, so an unchanged prefix is reused without booting a VM.
"""

from ember.templates.builder import LogLine, TemplateBuildError, TemplateResult, build_template
from ember.templates.cache import CACHE_PREFIX, LayerCache, files_key, scope_of
from ember.templates.image import pull_rootfs
from ember.templates.spec import (
    BASE_STEP,
    FINALIZE_STEP,
    FromImage,
    FromTemplate,
    Step,
    StepType,
    TemplateSpec,
    base_hash,
    layer_hash,
    step_name,
)

__all__ = [
    "BASE_STEP",
    "CACHE_PREFIX",
    "FINALIZE_STEP",
    "FromImage",
    "FromTemplate",
    "LayerCache",
    "LogLine",
    "Step",
    "StepType",
    "TemplateBuildError",
    "TemplateResult",
    "TemplateSpec",
    "base_hash",
    "build_template",
    "files_key",
    "layer_hash",
    "pull_rootfs",
    "scope_of",
    "step_name",
]
