"""The one retry policy for build reads: storage failures are retried 3 times, 50 ms -> 500 ms
plus jitter; failures a retry cannot cure are not retried at all."""

from __future__ import annotations

import pytest

from ember.build import READ_RETRY_DELAYS_S, read_with_retries
from ember.build.retry import READ_RETRY_JITTER
from ember.errors import BuildError, HeaderError, MappingError, StorageError


class Flaky:
    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return 42


def test_storage_failures_are_retried_after_growing_jittered_delays() -> None:
    read = Flaky([StorageError("timeout"), StorageError("reset"), StorageError("503")])
    slept: list[float] = []
    retried: list[str] = []
    result = read_with_retries(
        read, sleep=slept.append, on_retry=lambda exc, _delay: retried.append(str(exc))
    )
    assert result == 42
    assert read.calls == 4
    assert retried == ["timeout", "reset", "503"]
    assert READ_RETRY_DELAYS_S == (0.05, 0.15, 0.5)
    for waited, delay in zip(slept, READ_RETRY_DELAYS_S, strict=True):
        assert delay <= waited <= delay * (1 + READ_RETRY_JITTER)


def test_the_last_storage_failure_propagates_after_three_retries() -> None:
    read = Flaky([StorageError(f"attempt {n}") for n in range(1, 6)])
    slept: list[float] = []
    with pytest.raises(StorageError, match="attempt 4"):
        read_with_retries(read, sleep=slept.append)
    assert read.calls == 4
    assert len(slept) == 3


@pytest.mark.parametrize("error", [MappingError("gap"), HeaderError("corrupt"), BuildError("truncated")])
def test_a_failure_that_would_repeat_is_not_retried(error: Exception) -> None:
    read = Flaky([error])
    slept: list[float] = []
    with pytest.raises(type(error)):
        read_with_retries(read, sleep=slept.append)
    assert read.calls == 1
    assert slept == []


def test_a_sleep_that_raises_abandons_the_retries() -> None:
    class Closed(StorageError):
        pass

    def closing(_delay: float) -> None:
        raise Closed("closed while waiting")

    read = Flaky([StorageError("timeout")])
    with pytest.raises(Closed):
        read_with_retries(read, sleep=closing)
    assert read.calls == 1
