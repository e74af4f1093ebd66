"""Errors of the sandbox lifecycle, beside the ones of the mechanisms it composes."""

from __future__ import annotations

from ember.errors import BuildError, EmberError


class SandboxError(EmberError):
    """A sandbox could not be started, paused, checkpointed or killed."""


class SandboxGone(SandboxError):
    """The sandbox's process exited (its VM died, or it was killed) instead of answering."""


class SandboxStateError(SandboxError):
    """An operation was asked of a sandbox in a state that does not allow it."""

    def __init__(self, sandbox_id: str, state: str, action: str, allowed: tuple[str, ...]) -> None:
        self.sandbox_id = sandbox_id
        self.state = state
        self.action = action
        needs = " or ".join(allowed)
        super().__init__(
            f"cannot {action} sandbox {sandbox_id}: it is {state}, and {action} needs it {needs}"
        )


class BuildNotFound(BuildError):
    """The build has no metadata.json in the node's storage: it does not exist, or is not complete."""


class TargetTaken(BuildError):
    """A pause or create target already exists, or another writer claimed it first."""
