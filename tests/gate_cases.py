"""Every single-op activation form the converter handles, with its reference and tolerance."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf)(x)


@dataclass(frozen=True)
class Case:
    id: str
    op: str
    opset: int
    ref: object  # numpy reference of the original op
    attrs: dict = field(default_factory=dict)
    consts: tuple = ()
    shape: tuple = ("N", 16)
    jump: float | None = None  # a discontinuity: points within 0.01 of it are not compared

    @property
    def tol(self) -> float:
        return TOLERANCE[self.id]


SELU_A, SELU_G = 1.67326319217681884765625, 1.05070102710723876953125

CASES = [
    Case("Relu-9", "Relu", 9, lambda x: np.maximum(x, 0)),
    Case("Relu-14", "Relu", 14, lambda x: np.maximum(x, 0)),
    Case("LeakyRelu-9", "LeakyRelu", 9, lambda x: np.where(x > 0, x, 0.1 * x), {"alpha": 0.1}),
    Case("LeakyRelu-16", "LeakyRelu", 16, lambda x: np.where(x > 0, x, 0.01 * x)),
    Case("PRelu-scalar-9", "PRelu", 9, lambda x: np.where(x > 0, x, 0.25 * x), consts=(np.array([0.25], np.float32),)),
    Case("PRelu-16", "PRelu", 16, lambda x: np.where(x > 0, x, 0.25 * x), consts=(np.array(0.25, np.float32),)),
    Case("Elu-9", "Elu", 9, lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0)))),
    Case("Elu-alpha", "Elu", 13, lambda x: np.where(x > 0, x, 0.5 * np.expm1(np.minimum(x, 0))), {"alpha": 0.5}),
    Case("Selu-9", "Selu", 9, lambda x: SELU_G * np.where(x > 0, x, SELU_A * np.expm1(np.minimum(x, 0)))),
    Case("Celu-12", "Celu", 12, lambda x: np.maximum(x, 0) + np.minimum(0, 2.0 * np.expm1(np.minimum(x, 0) / 2.0)),
         {"alpha": 2.0}),
    Case("Softplus-9", "Softplus", 9, lambda x: np.logaddexp(0, x)),
    Case("Softsign-9", "Softsign", 9, lambda x: x / (1 + np.abs(x))),
    Case("Sigmoid-9", "Sigmoid", 9, lambda x: 1 / (1 + np.exp(-x))),
    Case("Sigmoid-13", "Sigmoid", 13, lambda x: 1 / (1 + np.exp(-x))),
    Case("HardSigmoid-9", "HardSigmoid", 9, lambda x: np.clip(0.2 * x + 0.5, 0, 1)),
    Case("HardSigmoid-ab", "HardSigmoid", 13, lambda x: np.clip(x / 6 + 0.5, 0, 1), {"alpha": 1 / 6, "beta": 0.5}),
    Case("Tanh-9", "Tanh", 9, np.tanh),
    Case("Tanh-13", "Tanh", 13, np.tanh),
    Case("HardSwish-14", "HardSwish", 14, lambda x: x * np.clip(x / 6 + 0.5, 0, 1)),
    Case("Gelu-20", "Gelu", 20, lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2)))),
    Case("Gelu-tanh-20", "Gelu", 20,
         lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))), {"approximate": "tanh"}),
    Case("Mish-18", "Mish", 18, lambda x: x * np.tanh(np.logaddexp(0, x))),
    Case("ThresholdedRelu-10", "ThresholdedRelu", 10, lambda x: np.where(x > 1.0, x, 0), jump=1.0),
    Case("ThresholdedRelu-alpha", "ThresholdedRelu", 10, lambda x: np.where(x > 2.5, x, 0), {"alpha": 2.5}, jump=2.5),
    Case("Clip-attr-9", "Clip", 9, lambda x: np.clip(x, 0, 6), {"min": 0.0, "max": 6.0}),
    Case("Clip-attr-nomax-9", "Clip", 9, lambda x: np.maximum(x, 0), {"min": 0.0}),
    Case("Clip-inputs-11", "Clip", 11, lambda x: np.clip(x, 0, 6),
         consts=(np.array(0, np.float32), np.array(6, np.float32))),
    Case("Clip-inputs-13", "Clip", 13, lambda x: np.clip(x, 0, 6),
         consts=(np.array(0, np.float32), np.array(6, np.float32))),
    Case("Clip-inputs-nomax-13", "Clip", 13, lambda x: np.maximum(x, 0), consts=(np.array(0, np.float32), None)),
]

# max |converted - original| over [-10, 10] with the data-free default K: the first
# shipped pre-fitted gate's measured error (amos_onnx/fit/library.json) plus about 30%. ReLU-like gates sit near half a
# quantisation step (10 / 2^10 / 2 = 0.005); the smooth ones are the fitter's current limit. Softplus K=12 went from
# 0.14 to 0.195 with fitter version 8 (segment chains: 2.3 instead of 3.4 spikes, MSE 1.7e-3 instead of 1.2e-3).
TOLERANCE = {
    "Relu-9": 0.016, "Relu-14": 0.016, "LeakyRelu-9": 0.13, "LeakyRelu-16": 0.078, "PRelu-scalar-9": 0.13,
    "PRelu-16": 0.13, "Elu-9": 0.18, "Elu-alpha": 0.11, "Selu-9": 0.26, "Celu-12": 0.25, "Softplus-9": 0.25,
    "Softsign-9": 0.16, "Sigmoid-9": 0.031, "Sigmoid-13": 0.031, "HardSigmoid-9": 0.0040, "HardSigmoid-ab": 0.00079,
    "Tanh-9": 0.13, "Tanh-13": 0.13, "HardSwish-14": 0.21, "Gelu-20": 0.11, "Gelu-tanh-20": 0.12, "Mish-18": 0.099,
    "ThresholdedRelu-10": 0.013, "ThresholdedRelu-alpha": 0.013, "Clip-attr-9": 0.0047, "Clip-attr-nomax-9": 0.016,
    "Clip-inputs-11": 0.0047, "Clip-inputs-13": 0.0047, "Clip-inputs-nomax-13": 0.016,
}

# Per-channel PRelu: one slope per channel of an NCHW tensor.
PRELU_SLOPES = np.array([0.0, 0.1, 0.25, -0.2], np.float32).reshape(4, 1, 1)
