"""Errors that reach the user as one line and an exit code.

Every error the CLI reports on purpose derives from `SpectrumError`; its message
says what is wrong and what to do, and `exit_code` is what the process returns
(2 for usage errors, 1 for failures at run time).
"""

from __future__ import annotations


class SpectrumError(Exception):
    """Base class: a failure with a message meant for the user."""

    exit_code: int = 1


class UsageError(SpectrumError):
    """Raised for invalid arguments or flag combinations (exit code 2)."""

    exit_code = 2


class SourceError(SpectrumError):
    """Raised when the weights cannot be found or fetched (missing path, unknown repo, offline)."""

    def __init__(self, message: str, *, model: str | None = None) -> None:
        super().__init__(message)
        self.model = model


class NoMatrixError(SpectrumError):
    """Raised when no weight matrix of the checkpoint is of the requested types."""


class CorruptCheckpointError(SpectrumError):
    """Raised when a weight file is truncated or its header does not describe its bytes."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}; the file is damaged or incomplete, download it again")
        self.path = path
        self.reason = reason


class WeightsChangedError(SpectrumError):
    """Raised when a weight file changed while it was scanned: its scores could mix two sets of weights,
    so none are kept (the cache is not written and the partial scan is discarded)."""

    def __init__(self, path: str, change: str) -> None:
        super().__init__(f"{path} changed while it was scanned ({change}); no scores were kept, run again "
                         "once the file is complete")
        self.path = path
        self.change = change


class CacheError(SpectrumError):
    """Raised when a scores file cannot be read or written."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class UnsupportedFormatError(SpectrumError):
    """Raised when a checkpoint is in a format or encoding that cannot be scored.

    Quantized packings (GPTQ, AWQ, bitsandbytes), GGUF architectures or quantization types
    without a mapping, and pickles that hold more than tensors. The message names the format
    and what to use instead.
    """

    def __init__(self, message: str, *, path: str | None = None, format: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.format = format


class SpecialFileError(SpectrumError):
    """Raised when a file spectrum reads is a FIFO, a device or a socket instead of a regular file, is a
    symbolic link where none may be, or is far larger than a file of its kind (see `spectrum.files`)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
