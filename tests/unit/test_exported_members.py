"""The public surface is deliberate: adding or removing a name is a visible change."""

import importlib

import ember

SUBPACKAGES = [
    "block", "build", "envd", "guest", "header", "memory", "nbd", "network", "sandbox", "storage", "uffd",
    "vmm", "vmm.firecracker", "vmm.qemu",
]  # fmt: skip


def test_top_level_exports_the_error_hierarchy_and_version() -> None:
    assert ember.__all__ == [
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


def test_every_exported_name_exists() -> None:
    for module in [ember, *(importlib.import_module(f"ember.{name}") for name in SUBPACKAGES)]:
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"
        assert sorted(set(module.__all__)) == sorted(module.__all__)


def test_every_error_derives_from_ember_error() -> None:
    for name in ember.__all__:
        value = getattr(ember, name)
        if isinstance(value, type):
            assert issubclass(value, ember.EmberError)
