"""Recurrent ops (LSTM, GRU, RNN) apply their gates' activations inside the op. One whose gates can be written
out exactly is lowered to Scans of plain nodes before the sites are found (rewrite.recurrent), so its activations
convert; any other is a site that does not convert, with the activations it keeps and why (recurrent_reason, the
why from the lowering).
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

# Recurrent ops and the activations their gates apply inside the op when the `activations` attribute is absent
# (per direction): the only ones they are lowered with.
RECURRENT_ACTIVATIONS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"), "RNN": ("Tanh",)}


def activation_names(given: object) -> list[str]:
    """An `activations` attribute's names (bytes or str), as strings."""
    return [a.decode() if isinstance(a, bytes) else str(a) for a in given or []]  # type: ignore[attr-defined]


def recurrent_reason(node: gs.Node, why: str | None) -> str:
    """Why a recurrent op left in the graph is a site that does not convert: the activations it applies inside, and
    `why` it was not lowered (rewrite.recurrent; None where nothing lowered the graph)."""
    names = list(dict.fromkeys(activation_names(node.attrs.get("activations")) or RECURRENT_ACTIVATIONS[node.op]))
    return (f"recurrent op: its gates apply {' and '.join(names)} inside the op, left as they are (not spiking"
            f"{f'; {why}' if why else ''}); the layers around it convert")
