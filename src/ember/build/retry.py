"""The one retry policy for reads of a build's data: what the FUSE memory file and the uffd page
server do when a storage read fails while a guest waits on it.

The original retries a source read 3 times with exponential backoff from 50 ms to 500 ms,
plus jitter (facts file 4.5), then gives up and stops the sandbox. Only ``StorageError`` is
worth retrying: a backend that timed out or refused may answer next time, while a
``MappingError``, ``HeaderError`` or ``BuildError`` (a missing or truncated object) fails
the same way again, and waiting would only delay the error the guest's owner must see::

    attempt 1 --fail--> wait 50 ms (+0-10 %) --> attempt 2 --fail--> wait 150 ms --> attempt 3
              --fail--> wait 500 ms --> attempt 4 --fail--> the StorageError of attempt 4
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Final, TypeVar

from ember.errors import StorageError

READ_RETRY_DELAYS_S: Final = (0.05, 0.15, 0.5)
"""Backoff before each retry: 3 retries, 50 ms growing to 500 ms."""
READ_RETRY_JITTER: Final = 0.1
"""Each wait is stretched by up to this fraction, so readers that failed together retry apart."""

_T = TypeVar("_T")


def read_with_retries(
    read: Callable[[], _T],
    *,
    delays_s: Sequence[float] = READ_RETRY_DELAYS_S,
    on_retry: Callable[[StorageError, float], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> _T:
    """``read()``, called again after each delay of ``delays_s`` while it raises ``StorageError``.

    ``on_retry(error, delay_s)`` runs before each wait (to log or count it); ``sleep`` waits,
    and may raise to abandon the retries (a server being closed). Any other exception, and
    the ``StorageError`` of the last attempt, propagate unchanged.
    """
    for delay_s in delays_s:
        try:
            return read()
        except StorageError as exc:
            wait_s = delay_s * (1 + random.uniform(0, READ_RETRY_JITTER))
            if on_retry is not None:
                on_retry(exc, wait_s)
            sleep(wait_s)
    return read()
