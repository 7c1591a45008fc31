"""API errors in the Databricks error format: `{"error_code", "message"}`."""

from __future__ import annotations


class ApiError(Exception):
    status = 400
    error_code = "BAD_REQUEST"
    # Seconds a client should wait before retrying (the Retry-After header), where it applies.
    retry_after_s: int | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> dict[str, str]:
        return {"error_code": self.error_code, "message": self.message}


class InvalidParameterValue(ApiError):
    status = 400
    error_code = "INVALID_PARAMETER_VALUE"


class MalformedRequest(ApiError):
    status = 400
    error_code = "MALFORMED_REQUEST"


class InvalidState(ApiError):
    status = 400
    error_code = "INVALID_STATE"


class ResourceDoesNotExist(ApiError):
    status = 404
    error_code = "RESOURCE_DOES_NOT_EXIST"


class Unauthenticated(ApiError):
    status = 401
    error_code = "UNAUTHENTICATED"


class PermissionDenied(ApiError):
    status = 403
    error_code = "PERMISSION_DENIED"


class NotImplementedApi(ApiError):
    status = 501
    error_code = "NOT_IMPLEMENTED"


class EndpointNotFound(ApiError):
    status = 404
    error_code = "ENDPOINT_NOT_FOUND"


class RequestLimitExceeded(ApiError):
    status = 429
    error_code = "REQUEST_LIMIT_EXCEEDED"


class TooLarge(ApiError):
    status = 413
    error_code = "REQUEST_ENTITY_TOO_LARGE"


class ResourceAlreadyExists(ApiError):
    status = 409
    error_code = "RESOURCE_ALREADY_EXISTS"


# DBFS and the Workspace API answer these with 400, RESOURCE_ALREADY_EXISTS included.


class FileAlreadyExists(ResourceAlreadyExists):
    status = 400


class MaxBlockSizeExceeded(ApiError):
    status = 400
    error_code = "MAX_BLOCK_SIZE_EXCEEDED"


class MaxReadSizeExceeded(ApiError):
    status = 400
    error_code = "MAX_READ_SIZE_EXCEEDED"


class MaxNotebookSizeExceeded(ApiError):
    status = 400
    error_code = "MAX_NOTEBOOK_SIZE_EXCEEDED"


class IoError(ApiError):
    """DBFS: a non-recursive delete of a directory that has entries."""

    status = 400
    error_code = "IO_ERROR"


class DirectoryNotEmpty(ApiError):
    """Workspace API: a non-recursive delete of a directory that has entries."""

    status = 400
    error_code = "DIRECTORY_NOT_EMPTY"


# Quotas (shared/domain/quotas.py). A count that only the caller can lower (clusters, jobs,
# pools, tokens, bytes) is 400 QUOTA_EXCEEDED, as Databricks answers a full jobs quota: the SDK
# raises at once. A count that frees itself (concurrent runs) is 429 RESOURCE_EXHAUSTED with
# Retry-After: the SDK waits and retries, as Databricks' workspace-wide run limit makes it.


class QuotaExceeded(ApiError):
    status = 400
    error_code = "QUOTA_EXCEEDED"


class ResourceExhausted(ApiError):
    status = 429
    error_code = "RESOURCE_EXHAUSTED"
    retry_after_s = 10
