"""The exceptions shift raises. Every user-facing failure is a ``ShiftError``; the CLI prints it
without a traceback and exits 1."""

from __future__ import annotations


class ShiftError(Exception):
    """Base of every error shift reports to a user."""

    hint: str | None = None

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\nhint: {self.hint}"


class QueryError(ShiftError):
    """A query that cannot be parsed or planned; carries the position of the offending text.

    ``line`` and ``column`` are 1-based; ``str(err)`` shows the query line with a caret under it.
    """

    def __init__(
        self,
        message: str,
        *,
        text: str,
        line: int,
        column: int,
        length: int = 1,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint)
        self.text = text
        self.line = line
        self.column = column
        self.length = max(1, length)

    @property
    def snippet(self) -> str:
        """The offending line with ``^`` markers under the offending text."""
        lines = self.text.splitlines() or [""]
        src = lines[min(self.line, len(lines)) - 1]
        return f"{src}\n{' ' * (self.column - 1)}{'^' * self.length}"

    def __str__(self) -> str:
        out = f"{self.message} (line {self.line}, column {self.column})\n{self.snippet}"
        return out if not self.hint else f"{out}\nhint: {self.hint}"


class NotFoundError(ShiftError):
    """A named model, task, pool or index that does not exist."""


class InvalidNameError(ShiftError):
    """A registry name that is not allowed (path separators, dots, control characters...)."""


class ModelFileError(ShiftError):
    """An ONNX file that cannot be read, validated or run."""


class WeightsFileError(ModelFileError):
    """A weight file that shift refuses to read: not a regular file, empty, too large for its
    architecture, truncated, not a plain tensor checkpoint (it holds objects a loader would have
    to unpickle), weights of another architecture, or non-finite values."""


class TaskDataError(ShiftError):
    """Task data that cannot be used: undecodable image, one class, mismatched lengths..."""


class InferenceTimeoutError(ModelFileError):
    """A model whose batch did not finish within the inference timeout (it may never finish)."""


class LockTimeoutError(ShiftError):
    """A lock held by another process for longer than this one agreed to wait; names the holder."""


class NotAHomeError(ShiftError):
    """A folder that is not marked as a shift home, where an operation would change files."""


class BackendError(ShiftError):
    """An inference backend that cannot run a model here: a missing package, a graph it cannot
    convert, or outputs that disagree with ONNX Runtime's."""


class AlreadyExistsError(ShiftError):
    """A model, pool or task name that is already registered (another writer may have won)."""


class WeightsMissingError(QueryError):
    """A task-aware query over models registered without weights (metadata only); ``models``
    names them. Raised before any work, so nothing is half-computed."""

    def __init__(self, message: str, *, models: list[str], **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.models = models


class DiskFullError(ShiftError):
    """A write that failed because the disk holding the home is full (or a quota or file-size
    limit was reached, or the disk failed the write). The write was rolled back or left only a
    temp file: nothing that was stored is lost, and the command works again once there is
    space."""


class ReadOnlyHomeError(ShiftError):
    """A write to a home whose folder or registry cannot be written (a read-only mount, or no
    write permission). Reading what is stored there (cached query results) still works."""


class NonFiniteScoreError(ShiftError):
    """A proxy score that is NaN or infinite. It is never cached or ranked: the proxy and the
    models it failed on are named instead."""
