"""What validation measures of one model output, batch by batch, as sums, counts and maxima that merge exactly:
the same figures from one pass over all the data or from shards measured apart (on Ray actors) and merged."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class OutputTally:
    """One output of the original against the converted model: error maxima and sums, the original's largest
    magnitude (for the relative bound), and for a classifier ([N, classes] floats) top-1 agreement and, with
    labels, both accuracies."""

    name: str
    elements: int = 0
    rows: int = 0
    error_sum: float = 0.0
    error_max: float = 0.0
    original_max: float = 0.0  # max |original output|
    classifier: bool = False
    agree: int = 0  # rows whose top-1 class agrees (classifier)
    labelled: int = 0  # rows with a label (a 2-D output with labels given)
    correct_original: int = 0
    correct_converted: int = 0

    def add(self, original: np.ndarray, converted: np.ndarray, labels: np.ndarray | None = None) -> None:
        """One batch of this output from both models; `labels`: the batch's class labels, if any."""
        ref, out = np.atleast_1d(original), np.atleast_1d(converted)
        ref64, out64 = ref.astype(np.float64), out.astype(np.float64)
        diff = np.abs(out64 - ref64)
        self.elements += diff.size
        self.rows += ref.shape[0]
        self.error_sum += float(diff.sum())
        self.error_max = max(self.error_max, float(diff.max(initial=0.0)))
        self.original_max = max(self.original_max, float(np.abs(ref64).max(initial=0.0)))
        self.classifier = ref.ndim == 2 and ref.shape[1] >= 2 and ref.dtype.kind == "f"
        if self.classifier:
            self.agree += int(np.count_nonzero(ref.argmax(1) == out.argmax(1)))
        if labels is not None and ref.ndim == 2:
            self.labelled += labels.shape[0]
            self.correct_original += int(np.count_nonzero(ref.argmax(1) == labels))
            self.correct_converted += int(np.count_nonzero(out.argmax(1) == labels))

    def merge(self, other: OutputTally) -> None:
        """Take in the same output's tally over other data."""
        if other.name != self.name:
            raise ValueError(f"cannot merge the tally of output '{other.name}' into that of '{self.name}'")
        self.elements += other.elements
        self.rows += other.rows
        self.error_sum += other.error_sum
        self.error_max = max(self.error_max, other.error_max)
        self.original_max = max(self.original_max, other.original_max)
        self.classifier = self.classifier or other.classifier
        for name in ("agree", "labelled", "correct_original", "correct_converted"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def mean_error(self) -> float:
        return self.error_sum / self.elements if self.elements else 0.0

    @property
    def agreement(self) -> float | None:
        """Top-1 agreement of a classifier output (1.0 over no rows); None for other outputs."""
        if not self.classifier:
            return None
        return self.agree / self.rows if self.rows else 1.0

    @property
    def accuracies(self) -> tuple[float, float] | None:
        """The original's and the converted model's accuracy on the labels, when there were any."""
        if not self.labelled:
            return None
        return self.correct_original / self.labelled, self.correct_converted / self.labelled
