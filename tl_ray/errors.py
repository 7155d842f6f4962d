"""One exception hierarchy for tl-ray, rooted at ``TLRayError``.

Each error carries one message in ``args`` only, so it pickles across Ray process boundaries.
"""

import difflib


class TLRayError(Exception):
    """Root of every error tl-ray raises on purpose."""

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ConfigError(TLRayError):
    """The experiment spec, a command-line value or an override is invalid."""

    exit_code = 2


class DataError(TLRayError):
    """A dataset, manifest, shard or image is missing, corrupt or inconsistent."""

    exit_code = 3


class StorageError(TLRayError):
    """Object storage or the local store cannot be reached or written."""

    exit_code = 4


class RegistryError(TLRayError):
    """A registry name, version or alias does not exist or fails its checks."""

    exit_code = 5


class ServingError(TLRayError):
    """A model cannot be served, or a request cannot be answered."""

    exit_code = 6


class ClusterError(TLRayError):
    """A Ray cluster cannot be reached, rejects a job, or a submitted job fails."""

    exit_code = 7


class TrialError(TLRayError):
    """Trials of a sweep ended in error once their retries (``train.max_failures``) ran out."""

    exit_code = 8


def error_summary(error: str | None) -> str:
    """A trial's error without Ray's traceback: its last exception line and the message lines after it."""
    lines = [line.strip() for line in (error or "").splitlines() if line.strip()]
    named = [i for i, line in enumerate(lines) if line.split(":")[0].endswith(("Error", "Exception"))]
    return " ".join(lines[named[-1]:] if named else lines[-1:])[:300] or "no error message"


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, or its class name when the message is empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def did_you_mean(name: str, choices) -> str:
    """A ``" Did you mean 'x'?"`` suffix, ``x`` the entry of ``choices`` most like ``name``; or ""."""
    norm = {c.replace("_", "").lower(): c for c in choices}
    hits = difflib.get_close_matches(name.replace("_", "").lower(), list(norm), n=1, cutoff=0.5)
    return f" Did you mean '{norm[hits[0]]}'?" if hits else ""
