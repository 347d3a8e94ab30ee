"""User-facing errors: each carries a one-line message naming the file, node or option."""

from __future__ import annotations


class AmosError(Exception):
    """A problem with the user's input or options (exit code 2), not a bug."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def one_line(self) -> str:
        """The message and hint on one line, as the CLI prints it."""
        text = str(self)
        return f"{text} (hint: {self.hint})" if self.hint else text


class ModelLoadError(AmosError):
    """The model file is missing, unreadable, not ONNX or fails the checker."""


class OptionError(AmosError):
    """An option value is out of range or unknown."""


class DataError(AmosError):
    """Calibration or validation data does not fit the model's inputs."""


class OutputPathError(AmosError):
    """The output path cannot be written, or would overwrite an input."""
