"""Recurrent ops (LSTM, GRU, RNN) apply their gates' activations inside the op. One whose gates can be written
out exactly (unsupported() is None) is lowered to Scans of plain nodes before the sites are found
(rewrite.recurrent), so its activations convert; any other is a site that does not convert, with the activations it
keeps and why (recurrent_reason).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from amos_onnx.options import FindOptions

# Recurrent ops and the activations their gates apply inside the op when the `activations` attribute is absent
# (per direction): the only ones they are lowered with.
RECURRENT_ACTIVATIONS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"), "RNN": ("Tanh",)}


def unsupported(op: str, attrs: dict[str, object], inputs: list[str], constant: Callable[[str], bool]) -> str | None:
    """Why recurrent op `op` with these attributes and inputs ("" where omitted) cannot be lowered exactly (None: it
    can); `constant` tells an input held in the model file as float32 constants, or computed from them alone."""
    given = [i < len(inputs) and inputs[i] != "" for i in range(8)]
    raw = attrs.get("activations") or []
    acts = [a.decode() if isinstance(a, bytes) else str(a) for a in raw]  # type: ignore[attr-defined]
    defaults = RECURRENT_ACTIVATIONS[op]
    why = [
        ("its weights W and R are neither float32 constants held in the model file nor computed from them alone",
         not all(given[i] and constant(inputs[i]) for i in (1, 2))),
        ("its bias B is neither a float32 constant held in the model file nor computed from them alone",
         given[3] and not constant(inputs[3])),
        ("it has sequence lengths", given[4]),
        ("it has peephole weights", op == "LSTM" and given[7]),
        ("it clips its cell input", attrs.get("clip") is not None),
        ("it couples its input and forget gates", bool(attrs.get("input_forget", 0))),
        ("its layout is batch-first", bool(attrs.get("layout", 0))),
        (f"its activations are {', '.join(acts)}", any(
            a != defaults[i % len(defaults)] for i, a in enumerate(acts))),
        ("it has activation_alpha or activation_beta", attrs.get("activation_alpha") is not None
         or attrs.get("activation_beta") is not None),
    ]
    found = [reason for reason, bad in why if bad]
    return "; ".join(found) if found else None


def selected(op: str, options: FindOptions) -> bool:
    """Whether --only and --skip let the gates of recurrent op `op` (its activations' sites once lowered) convert."""
    return all((options.only is None or act in options.only) and act not in (options.skip or ())
               for act in set(RECURRENT_ACTIVATIONS[op]))


def recurrent_reason(node: gs.Node, options: FindOptions) -> str:
    """Why a recurrent op (LSTM, GRU, RNN) left in the graph is a site that does not convert: the activations it
    applies inside, and why it was not lowered to a Scan of spiking gates (rewrite.recurrent)."""
    given = node.attrs.get("activations") or RECURRENT_ACTIVATIONS[node.op]
    names = list(dict.fromkeys(a.decode() if isinstance(a, bytes) else str(a) for a in given))
    if not selected(node.op, options):
        why = f"--only or --skip leave out its gates' {' or '.join(sorted(set(RECURRENT_ACTIVATIONS[node.op])))}"
    else:
        inputs = [t.name for t in node.inputs]
        found = unsupported(node.op, dict(node.attrs), inputs, lambda name: _float_constant(node, name))
        found = found or "its weights could not be evaluated from their constants"
        why = f"not lowered to Scans of spiking gates: {found}"
    return (f"recurrent op: its gates apply {' and '.join(names)} inside the op, left as they are (not spiking; "
            f"{why}); the layers around it convert")


def _float_constant(node: gs.Node, name: str, depth: int = 0) -> bool:
    """Whether the node's input `name` is float32 and held in the model file as a constant (an initializer not in
    an external data file, or a Constant node's value), or computed from such constants alone through nodes
    without subgraphs (rewrite.recurrent evaluates it then)."""
    tensor = next((t for t in node.inputs if t.name == name), None)
    if isinstance(tensor, gs.Constant):  # a weight left in its external data file is not read to lower it
        return tensor.data_location != onnx.TensorProto.EXTERNAL and tensor.dtype == np.float32
    if tensor is None or len(tensor.inputs) != 1 or depth > 64:
        return False
    producer = tensor.inputs[0]
    if producer.op == "Constant":
        return True
    if any(isinstance(v, gs.Graph) for v in producer.attrs.values()):
        return False
    return tensor.dtype in (np.float32, None) and all(
        t.name == "" or _float_constant(producer, t.name, depth + 1) or _integer_constant(t) for t in producer.inputs)


def _integer_constant(tensor: gs.Tensor) -> bool:
    """A constant of any type (shapes, axes and indices in the computation of a weight)."""
    return isinstance(tensor, gs.Constant) or (len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant")
