"""An LSTM lowered to a Scan whose body applies its gates' Sigmoid and Tanh as nodes of their own, so that they
convert like any activation inside a Scan body (data-free ranges) and the whole network spikes.

Per direction, the input's four projections (X W_g^T + Wb_g + Rb_g, gates i, o, f, c in ONNX's order) are
computed for every step before the Scan; the body adds H R_g^T, applies the activations and updates the state:
i, o, f = Sigmoid, c~ = Tanh, C = f C + i c~, H = o Tanh(C) (ONNX's LSTM without peepholes, clip or
input_forget). A reverse direction scans backwards and stacks its outputs in input order, as the LSTM does.
An LSTM this cannot lower exactly (sequence lengths, peepholes, other activations, ...) stays as it is, a site
that does not convert, with the reason (unsupported()).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from amos_onnx.find.recurrent import OP, selected, unsupported
from amos_onnx.load import constant_tensors, default_opset
from amos_onnx.options import FindOptions
from amos_onnx.rewrite.graph import Names

GATES = "iofc"  # ONNX's order of an LSTM's gates in W, R and B


def _attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _given(node: onnx.NodeProto, index: int) -> bool:
    return len(node.input) > index and node.input[index] != ""


def _proto_unsupported(node: onnx.NodeProto, constants: dict[str, onnx.TensorProto]) -> str | None:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return unsupported(attrs, list(node.input),
                       lambda name: name in constants and constants[name].data_type == TensorProto.FLOAT
                       and constants[name].data_location != TensorProto.EXTERNAL)


def lower_recurrent(model: onnx.ModelProto, options: FindOptions) -> onnx.ModelProto:
    """`model` (not modified) with every top-level LSTM that can be lowered (unsupported() is None) replaced by its
    Scans; the model itself when there is none, or --only/--skip leave out Sigmoid or Tanh (selected())."""
    if not selected(options) or not any(n.op_type == OP and n.domain in ("", "ai.onnx") for n in model.graph.node):
        return model
    constants = constant_tensors(model)
    chosen = {i for i, n in enumerate(model.graph.node) if n.op_type == OP and n.domain in ("", "ai.onnx")
              and _proto_unsupported(n, constants) is None}
    if not chosen:
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    names, opset = Names(copy.graph), default_opset(copy)
    nodes: list[onnx.NodeProto] = []
    for i, node in enumerate(copy.graph.node):
        if i in chosen:
            made, inits = Lowering(node, constants, names, opset).nodes()
            nodes += made
            copy.graph.initializer.extend(inits)
        else:
            nodes.append(node)
    del copy.graph.node[:]
    copy.graph.node.extend(nodes)
    return copy


class Lowering:
    """One LSTM's replacement: the nodes and initializers of its Scans (see the module text)."""

    def __init__(self, node: onnx.NodeProto, constants: dict[str, onnx.TensorProto], names: Names,
                 opset: int) -> None:
        self.node, self.opset = node, opset
        direction = _attr(node, "direction", b"forward")
        self.direction = direction.decode() if isinstance(direction, bytes) else str(direction)
        self.w = numpy_helper.to_array(constants[node.input[1]]).astype(np.float32)
        self.r = numpy_helper.to_array(constants[node.input[2]]).astype(np.float32)
        dirs, hidden = self.w.shape[0], self.r.shape[2]  # hidden_size is optional: R is (dirs, 4 hidden, hidden)
        self.hidden = hidden
        self.b = (numpy_helper.to_array(constants[node.input[3]]).astype(np.float32) if _given(node, 3)
                  else np.zeros((dirs, 8 * hidden), np.float32))
        self.make: Callable[[str], str] = names.scoped(node.name or node.output[0] or next(o for o in node.output if o))
        self.out: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, part: str, value: np.ndarray) -> str:
        name = self.make(part)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def add(self, op: str, inputs: list[str], part: str, **attrs: object) -> str:
        out = self.make(part)
        self.out.append(helper.make_node(op, inputs, [out], name=self.make(f"{part}_node"), **attrs))  # type: ignore[arg-type]
        return out

    def unsqueeze(self, x: str, axis: int, part: str) -> str:
        if self.opset >= 13:
            return self.add("Unsqueeze", [x, self.const(f"{part}_axes", np.array([axis], np.int64))], part)
        return self.add("Unsqueeze", [x], part, axes=[axis])

    def zeros(self) -> str:
        """A (batch, hidden) tensor of zeros, the batch taken from X."""
        shape = self.add("Shape", [self.node.input[0]], "x_shape")
        batch = self.add("Gather", [shape, self.const("batch_index", np.array([1], np.int64))], "batch")
        size = self.add("Concat", [batch, self.const("hidden", np.array([self.hidden], np.int64))], "state_shape",
                        axis=0)
        return self.add("ConstantOfShape", [size], "zeros", value=helper.make_tensor("zero", TensorProto.FLOAT, [1],
                                                                                   [0.0]))

    def initial(self, index: int, d: int, zeros: Callable[[], str]) -> str:
        if not _given(self.node, index):
            return zeros()
        return self.add("Gather", [self.node.input[index], self.const(f"dir{d}_index", np.array(d, np.int64))],
                        f"dir{d}_initial_{index}", axis=0)

    def nodes(self) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
        dirs = self.w.shape[0]
        reverse = [self.direction == "reverse" or (self.direction == "bidirectional" and d == 1) for d in range(dirs)]
        shared: list[str] = []

        def zeros() -> str:
            if not shared:
                shared.append(self.zeros())
            return shared[0]

        made = [self.direction_scan(d, reverse[d], self.initial(5, d, zeros), self.initial(6, d, zeros))
                for d in range(dirs)]  # per direction: Y (seq, batch, hidden), final H, final C
        for k, (wanted, axis) in enumerate(zip(self.node.output, (1, 0, 0))):  # Y, Y_h, Y_c: a directions axis
            if wanted:
                parts = [self.unsqueeze(outs[k], axis, f"dir{d}_{'yhc'[k]}") for d, outs in enumerate(made)]
                self.out.append(helper.make_node("Concat", parts, [wanted], name=self.make(f"{wanted}_concat"),
                                                 axis=axis) if len(parts) > 1
                                else helper.make_node("Identity", parts, [wanted], name=self.make(f"{wanted}_out")))
        return self.out, self.inits

    def direction_scan(self, d: int, reverse: bool, h0: str, c0: str) -> tuple[str, str, str]:
        """The Scan of direction d: Y of the direction (seq, batch, hidden), the final H and the final C."""
        hid = self.hidden
        projected = []
        for g, gate in enumerate(GATES):
            w = np.ascontiguousarray(self.w[d, g * hid:(g + 1) * hid].T)
            bias = self.b[d, g * hid:(g + 1) * hid] + self.b[d, (4 + g) * hid:(5 + g) * hid]
            xw = self.add("MatMul", [self.node.input[0], self.const(f"dir{d}_w{gate}", w)], f"dir{d}_x{gate}")
            projected.append(self.add("Add", [xw, self.const(f"dir{d}_b{gate}", bias.astype(np.float32))],
                                      f"dir{d}_xb{gate}"))
        body = self.body(d)
        outs = [self.make(f"dir{d}_{part}") for part in ("h_last", "c_last", "y")]
        self.out.append(helper.make_node("Scan", [h0, c0, *projected], outs, name=self.make(f"dir{d}_scan"),
                                         body=body, num_scan_inputs=4, scan_input_directions=[int(reverse)] * 4,
                                         scan_output_directions=[int(reverse)]))
        return outs[2], outs[0], outs[1]

    def body(self, d: int) -> onnx.GraphProto:
        """One step: H, C and the four projections in; H', C' and H' (stacked) out. Its tensors are named under a
        scope of their own (a body's names must not shadow the outer graph's); its nodes by what they compute."""
        hid = self.hidden
        scope = self.make(f"dir{d}_step")

        def n(name: str) -> str:
            return f"{scope}/{name}"

        def node(op: str, inputs: list[str], output: str, name: str) -> onnx.NodeProto:
            return helper.make_node(op, [n(i) for i in inputs], [n(output)], name=name)

        nodes, inits = [], []
        for g, gate in enumerate(GATES):
            r = np.ascontiguousarray(self.r[d, g * hid:(g + 1) * hid].T)
            inits.append(numpy_helper.from_array(r, n(f"r{gate}")))
            act = "Tanh" if gate == "c" else "Sigmoid"
            nodes += [node("MatMul", ["h", f"r{gate}"], f"hr{gate}", f"{gate}_recurrence"),
                      node("Add", [f"x{gate}", f"hr{gate}"], f"pre{gate}", f"{gate}_input"),
                      node(act, [f"pre{gate}"], gate, f"{gate}_{act.lower()}")]
        nodes += [node("Mul", ["f", "c_in"], "fc", "forget"), node("Mul", ["i", "c"], "ic", "remember"),
                  node("Add", ["fc", "ic"], "c_out", "cell"), node("Tanh", ["c_out"], "tc", "cell_tanh"),
                  node("Mul", ["o", "tc"], "h_out", "hidden"), node("Identity", ["h_out"], "y", "output")]

        def value(name: str) -> onnx.ValueInfoProto:
            return helper.make_tensor_value_info(n(name), TensorProto.FLOAT, ["batch", hid])

        return helper.make_graph(nodes, scope, [value("h"), value("c_in"), *(value(f"x{g}") for g in GATES)],
                                 [value("h_out"), value("c_out"), value("y")], inits)
