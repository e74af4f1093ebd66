"""pytest imports test files by their base name (no __init__.py in tests/): two alike would clash."""

from collections import Counter
from pathlib import Path


def test_every_test_module_name_is_unique() -> None:
    tests = Path(__file__).resolve().parents[1]
    names = Counter(path.name for path in tests.rglob("*.py") if path.name != "conftest.py")
    assert [name for name, count in names.items() if count > 1] == []
