"""The exception tree. Tasks decide what to do by type, never by parsing messages.

EnrichmentError
├── UpstreamError            a provider or sink answered badly or not at all
│   ├── RateLimited          429 or quota exhausted; retry after ``retry_after``
│   ├── Unavailable          5xx, timeout, connection error, open circuit; retryable
│   ├── BadResponse          2xx whose body is not what the API documents; not retryable
│   └── Rejected             4xx that will not change on retry
│       ├── AuthFailed       401/403: bad key or missing permission
│       └── VisitorNotFound  the provider has no journey for this visitor (400 bot, 404)
├── Throttled                our own shared limiter says wait; reschedule, no attempt used
│   └── NotReplicated        too few Redis replicas acknowledged a write in time
└── InvalidEvent             the stored event cannot be processed
"""

from __future__ import annotations


class EnrichmentError(Exception):
    """Base of every error this service raises on purpose."""

    retryable: bool = False

    def __init__(self, message: str, *, service: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.service = service

    def __str__(self) -> str:
        return f"{self.service}: {self.message}" if self.service else self.message


class UpstreamError(EnrichmentError):
    """A call to a provider or sink failed."""

    def __init__(
        self,
        message: str,
        *,
        service: str = "",
        status_code: int | None = None,
        retry_after: float | None = None,
        effect_possible: bool = False,
    ) -> None:
        super().__init__(message, service=service)
        self.status_code = status_code
        self.retry_after = retry_after
        # True when the request may have taken effect upstream (a timeout after sending): the
        # next attempt must look for the effect before repeating it.
        self.effect_possible = effect_possible

    def with_hint(self, hint: str) -> UpstreamError:
        """The same error, of the same type, with advice for the operator appended."""
        return type(self)(
            f"{self.message} ({hint})",
            service=self.service,
            status_code=self.status_code,
            retry_after=self.retry_after,
            effect_possible=self.effect_possible,
        )


class RateLimited(UpstreamError):
    retryable = True


class Unavailable(UpstreamError):
    retryable = True


class BadResponse(UpstreamError):
    retryable = False


class Rejected(UpstreamError):
    retryable = False


class AuthFailed(Rejected):
    pass


class VisitorNotFound(Rejected):
    pass


class Throttled(EnrichmentError):
    """The shared rate limiter or a provider pause asks to wait longer than a task should block."""

    retryable = True

    def __init__(self, message: str, *, service: str = "", retry_after: float) -> None:
        super().__init__(message, service=service)
        self.retry_after = retry_after


class NotReplicated(Throttled):
    """Fewer Redis replicas than required (``REDIS_MIN_REPLICAS``) acknowledged a write within
    ``REDIS_REPLICA_TIMEOUT_MS``: a failover now could lose it. The intake answers 503; a
    delivery waits (nothing was posted) and tries again."""

    def __init__(self, acknowledged: int, required: int, timeout_ms: int) -> None:
        super().__init__(
            f"{acknowledged} of {required} replicas acknowledged the write within {timeout_ms} ms",
            service="redis",
            retry_after=1.0,
        )


class InvalidEvent(EnrichmentError):
    retryable = False
