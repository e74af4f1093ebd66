"""What the control plane answers when it refuses: ``ApiError`` and the exact texts E2B's SDK sees.

Every refusal leaves as JSON ``{"code": <status>, "message": <text>}``, plus ``error_code``
where the original sends one (the SDK reads it: ``sandbox_snapshot_guest_agent_unresponsive``
becomes ``GuestUnresponsiveException``). The messages marked *verbatim* are the original's;
clients match on some of them (the ``Failed to place sandbox`` prefix is documented as
load-bearing). The others are ember's own wording.
"""

from __future__ import annotations

from collections.abc import Mapping

from ember.errors import EmberError

# verbatim
INVALID_API_KEY = "Invalid API key, please visit https://e2b.dev/docs/api-key for more information."
INVALID_SANDBOX_ID = "Invalid sandbox ID"
TIMEOUT_NOT_POSITIVE = "Timeout must be greater than 0"
MAX_LENGTH_EXCEEDED = "Max instance length exceeded"
PLACEMENT_FAILED = "Failed to place sandbox"
STILL_TRANSITIONING = "The sandbox is still transitioning. Try again in a moment."
CONCURRENCY_LIMIT = (
    "you have reached the maximum number of concurrent E2B sandboxes ({limit}). "
    "If you need more, please contact us at 'https://e2b.dev/docs/getting-help'"
)

# error_code values (verbatim)
CAPACITY_UNAVAILABLE = "sandbox_capacity_unavailable"
PLACEMENT_TIMEOUT = "sandbox_placement_timeout"
NO_COMPATIBLE_NODE = "sandbox_no_compatible_node"
CREATE_FAILED = "sandbox_create_failed"
INTERNAL = "internal_server_error"

# Seconds a client is told to wait after the concurrency limit refused it (header Retry-After).
CONCURRENCY_RETRY_AFTER_S = 1


class ApiError(EmberError):
    """A request the control plane refuses: HTTP ``status``, ``message``, optional ``error_code``."""

    def __init__(
        self,
        status: int,
        message: str,
        error_code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status = status
        self.message = message
        self.error_code = error_code
        self.headers = dict(headers or {})
        super().__init__(message)

    def body(self) -> dict[str, object]:
        body: dict[str, object] = {"code": self.status, "message": self.message}
        if self.error_code is not None:
            body["error_code"] = self.error_code
        return body


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def sandbox_not_found(sandbox_id: str) -> ApiError:
    """verbatim: the original's answer for a sandbox that is not there or not the caller's."""
    return ApiError(404, f"Sandbox \"{sandbox_id}\" doesn't exist or you don't have access to it")


def template_not_found(reference: str) -> ApiError:
    return ApiError(404, f'Template "{reference}" not found: register it or check the name')


def concurrency_limit(limit: int) -> ApiError:
    return ApiError(
        429,
        CONCURRENCY_LIMIT.format(limit=limit),
        headers={"Retry-After": str(CONCURRENCY_RETRY_AFTER_S)},
    )


def timeout_too_long(max_hours: int) -> ApiError:
    return ApiError(400, f"Timeout cannot be greater than {max_hours} hours")


def unauthorized() -> ApiError:
    return ApiError(401, INVALID_API_KEY)
