"""A recurrent op (LSTM, GRU, RNN) lowered to a Scan per direction whose body applies its gates' activations as
nodes of their own, so that they convert like any activation inside a Scan body (calibrated step by step) and the whole
network spikes.

Per direction, the input's projection for each gate (X W_g^T plus its biases) is computed for every step before
the Scan; the body adds the recurrence H R_g^T, applies the activations and updates the state, as ONNX defines
the op with its default activations:
- LSTM (gates i, o, f, c): i, o, f = Sigmoid, c~ = Tanh, C = f C + i c~, H = o Tanh(C);
- GRU (z, r, h): z, r = Sigmoid, h~ = Tanh(X W_h^T + (r H) R_h^T + Rb_h + Wb_h), or with linear_before_reset
  Tanh(X W_h^T + r (H R_h^T + Rb_h) + Wb_h), H = h~ + z (H - h~);
- RNN (i): H = Tanh(X W_i^T + H R_i^T + Wb_i + Rb_i).
A reverse direction scans backwards and stacks its outputs in input order, as the op does. One this cannot lower
exactly (unsupported(): sequence lengths, peepholes, other activations, ...), or whose activations --only/--skip
leave out, stays as it is, a site that does not convert, with the reason the lowering gives (Lowered.left).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from amos_onnx.find.recurrent import RECURRENT_ACTIVATIONS, activation_names
from amos_onnx.load import default_opset, graph_constants
from amos_onnx.options import FindOptions
from amos_onnx.rewrite.graph import Names, _subgraphs, node_id

GATES = {"LSTM": "iofc", "GRU": "zrh", "RNN": "i"}  # ONNX's order of each op's gates in W, R and B
STATES = {"LSTM": ("h", "c"), "GRU": ("h",), "RNN": ("h",)}  # carried from step to step (initial_h, initial_c)


def _attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _given(node: onnx.NodeProto, index: int) -> bool:
    return len(node.input) > index and node.input[index] != ""


FOLD_NODES = 64  # nodes a recurrent op's weight may be computed through from constants, at most, to be evaluated
NOT_LOWERED = "not lowered to Scans of spiking gates"


def unsupported(op: str, attrs: dict[str, object], inputs: list[str], constant: Callable[[str], bool]) -> str | None:
    """Why recurrent op `op` with these attributes and inputs ("" where omitted) cannot be lowered exactly (None: it
    can); `constant` tells an input held in the model file as float32 constants, or computed from them alone."""
    given = [i < len(inputs) and inputs[i] != "" for i in range(8)]
    acts, defaults = activation_names(attrs.get("activations")), RECURRENT_ACTIVATIONS[op]
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
        (f"its activations are {', '.join(acts)}", any(a != defaults[i % len(defaults)] for i, a in enumerate(acts))),
        ("it has activation_alpha or activation_beta", attrs.get("activation_alpha") is not None
         or attrs.get("activation_beta") is not None),
    ]
    found = [reason for reason, bad in why if bad]
    return "; ".join(found) if found else None


def selected(op: str, options: FindOptions) -> bool:
    """Whether --only and --skip let the gates of recurrent op `op` (its activations' sites once lowered) convert."""
    return all((options.only is None or act in options.only) and act not in (options.skip or ())
               for act in set(RECURRENT_ACTIVATIONS[op]))


@dataclass
class Lowered:
    """A model with its recurrent ops lowered: how many of each op were, and why each one left is not (by node id:
    its first output)."""

    model: onnx.ModelProto
    written: Counter[str] = field(default_factory=Counter)
    left: dict[str, str] = field(default_factory=dict)


def lower_recurrent(model: onnx.ModelProto, options: FindOptions) -> Lowered:
    """`model` (not modified) with every recurrent op that can be lowered (unsupported() is None, and --only/--skip
    select its activations), in subgraphs too, replaced by its Scans; the model itself when there is none."""
    if not any(node.op_type in RECURRENT_ACTIVATIONS for node in _every_node(model.graph)):
        return Lowered(model)  # most models: no copy
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    done = Lowered(copy)
    _lower_graph(copy.graph, {}, Names(copy.graph), default_opset(copy), options, done)
    return done if done.written else Lowered(model, left=done.left)


def _every_node(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for sub in _subgraphs(node):
            yield from _every_node(sub)


def _lower_graph(graph: onnx.GraphProto, outer: dict[str, onnx.TensorProto], names: Names, opset: int,
                 options: FindOptions, done: Lowered) -> None:
    """Lower the recurrent ops of `graph` and its subgraphs in place (`outer`: the constants of the scopes around
    it), counting them in `done` (and why those left are)."""
    constants = {**outer, **graph_constants(graph)}
    producers = {out: node for node in graph.node for out in node.output}
    nodes = []
    for node in graph.node:
        for sub in _subgraphs(node):
            _lower_graph(sub, constants, names, opset, options, done)
        if node.domain not in ("", "ai.onnx") or node.op_type not in RECURRENT_ACTIVATIONS:
            nodes.append(node)
            continue
        weights, why = _weights(node, constants, producers, opset, options)
        if weights is None:
            done.left[node_id(node)] = why
            nodes.append(node)
            continue
        made, inits = Lowering(node, weights, names, opset).nodes()
        nodes += made
        graph.initializer.extend(inits)
        done.written[node.op_type] += 1
    if done.written:
        del graph.node[:]
        graph.node.extend(nodes)


def _weights(node: onnx.NodeProto, constants: dict[str, onnx.TensorProto], producers: dict[str, onnx.NodeProto],
             opset: int, options: FindOptions) -> tuple[dict[str, onnx.TensorProto] | None, str]:
    """A recurrent op's W, R and B by name when it can be lowered (held as constants, or computed from them alone
    and evaluated here), else None and why not."""
    if not selected(node.op_type, options):
        gates = " or ".join(sorted(set(RECURRENT_ACTIVATIONS[node.op_type])))
        return None, f"--only or --skip leave out its gates' {gates}"
    found = {}
    for name in [n for n in node.input[1:4] if n]:
        tensor = constants.get(name)
        if tensor is None:
            tensor = _fold(name, constants, producers, opset)
        if tensor is not None and tensor.data_type == TensorProto.FLOAT and \
                tensor.data_location != TensorProto.EXTERNAL:
            found[name] = tensor
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    why = unsupported(node.op_type, attrs, list(node.input), found.__contains__)
    return (None, f"{NOT_LOWERED}: {why}") if why else (found, "")


def _fold(name: str, constants: dict[str, onnx.TensorProto], producers: dict[str, onnx.NodeProto],
          opset: int) -> onnx.TensorProto | None:
    """Tensor `name` evaluated (onnx's reference evaluator) when the graph computes it from constants alone, through
    at most FOLD_NODES nodes without subgraphs; else None."""
    needed: list[onnx.NodeProto] = []
    leaves: dict[str, onnx.TensorProto] = {}
    todo, seen = [name], set()
    while todo:
        tensor = todo.pop()
        if tensor in seen or not tensor:
            continue
        seen.add(tensor)
        if tensor in constants:  # a Constant node's value may carry another name
            leaves[tensor] = onnx.TensorProto()
            leaves[tensor].CopyFrom(constants[tensor])
            leaves[tensor].name = tensor
            continue
        node = producers.get(tensor)
        if node is None or _subgraphs(node) or len(needed) >= FOLD_NODES or \
                any(t.data_location == TensorProto.EXTERNAL for t in leaves.values()):
            return None
        needed.append(node)
        todo += list(node.input)
    from onnx.reference import ReferenceEvaluator

    order = {id(n): i for i, n in enumerate(producers.values())}
    nodes = sorted({id(n): n for n in needed}.values(), key=lambda n: order[id(n)])
    graph = helper.make_graph(nodes, "fold", [], [helper.make_tensor_value_info(name, TensorProto.UNDEFINED, None)],
                              list(leaves.values()))
    try:
        values = ReferenceEvaluator(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])).run(
            None, {})
    except Exception:  # an op the reference evaluator does not know: the op stays as it is
        return None
    return numpy_helper.from_array(np.asarray(values[0]), name)  # type: ignore[index]


class Lowering:
    """One recurrent op's replacement: the nodes and initializers of its Scans (see the module text)."""

    def __init__(self, node: onnx.NodeProto, constants: dict[str, onnx.TensorProto], names: Names,
                 opset: int) -> None:
        self.node, self.opset, self.op = node, opset, node.op_type
        self.gates, self.states = GATES[self.op], STATES[self.op]
        direction = _attr(node, "direction", b"forward")
        self.direction = direction.decode() if isinstance(direction, bytes) else str(direction)
        self.linear_before_reset = bool(_attr(node, "linear_before_reset", 0))
        self.w = numpy_helper.to_array(constants[node.input[1]]).astype(np.float32)
        self.r = numpy_helper.to_array(constants[node.input[2]]).astype(np.float32)
        dirs, hidden = self.w.shape[0], self.r.shape[2]  # hidden_size is optional: R is (dirs, gates x hidden, hidden)
        self.hidden = hidden
        self.b = (numpy_helper.to_array(constants[node.input[3]]).astype(np.float32) if _given(node, 3)
                  else np.zeros((dirs, 2 * len(self.gates) * hidden), np.float32))
        self.make: Callable[[str], str] = names.scoped(node.name or next(o for o in node.output if o))
        self.out: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def block(self, a: np.ndarray, d: int, g: int) -> np.ndarray:
        """Gate g's block of direction d of W, R or B's halves (rows g x hidden to (g + 1) x hidden)."""
        return a[d, g * self.hidden:(g + 1) * self.hidden]

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

    def nodes(self) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
        dirs = self.w.shape[0]
        shared: list[str] = []

        def initial(index: int, d: int) -> str:
            if _given(self.node, index):
                return self.add("Gather", [self.node.input[index], self.const(f"dir{d}_index", np.array(d, np.int64))],
                                f"dir{d}_initial_{index}", axis=0)
            if not shared:
                shared.append(self.zeros())
            return shared[0]

        made = [self.direction_scan(d, self.direction == "reverse" or (self.direction == "bidirectional" and d == 1),
                                    [initial(5 + k, d) for k in range(len(self.states))]) for d in range(dirs)]
        # per direction: Y (seq, batch, hidden), then the final states; the op's outputs get a directions axis
        for k, (wanted, axis) in enumerate(zip(self.node.output, (1, 0, 0))):
            if wanted:
                parts = [self.unsqueeze(outs[k], axis, f"dir{d}_{'yhc'[k]}") for d, outs in enumerate(made)]
                self.out.append(helper.make_node("Concat", parts, [wanted], name=self.make(f"{wanted}_concat"),
                                                 axis=axis) if len(parts) > 1
                                else helper.make_node("Identity", parts, [wanted], name=self.make(f"{wanted}_out")))
        return self.out, self.inits

    def direction_scan(self, d: int, reverse: bool, initials: list[str]) -> list[str]:
        """The Scan of direction d: Y of the direction (seq, batch, hidden), then its final states."""
        count = len(self.gates)
        projected = []
        for g, gate in enumerate(self.gates):
            w = np.ascontiguousarray(self.block(self.w, d, g).T)
            inner = self.op == "GRU" and gate == "h"  # its recurrence bias goes inside the step
            bias = self.block(self.b, d, g) + (0 if inner else self.block(self.b, d, count + g))
            xw = self.add("MatMul", [self.node.input[0], self.const(f"dir{d}_w{gate}", w)], f"dir{d}_x{gate}")
            projected.append(self.add("Add", [xw, self.const(f"dir{d}_b{gate}", bias.astype(np.float32))],
                                      f"dir{d}_xb{gate}"))
        outs = [self.make(f"dir{d}_{state}_last") for state in self.states] + [self.make(f"dir{d}_y")]
        self.out.append(helper.make_node("Scan", [*initials, *projected], outs, name=self.make(f"dir{d}_scan"),
                                         body=self.body(d), num_scan_inputs=count,
                                         scan_input_directions=[int(reverse)] * count,
                                         scan_output_directions=[int(reverse)]))
        return [outs[-1], *outs[:-1]]

    def body(self, d: int) -> onnx.GraphProto:
        """One step: the states and each gate's projection in; the new states and H' (stacked) out. Its tensors are
        named under a scope of their own (a body's names must not shadow the outer graph's); its nodes by what they
        compute."""
        scope = self.make(f"dir{d}_step")
        step = Step(scope)
        for g, gate in enumerate(self.gates):
            step.inits.append(numpy_helper.from_array(np.ascontiguousarray(self.block(self.r, d, g).T),
                                                      step.n(f"r{gate}")))
        if self.op == "LSTM":
            for gate in self.gates:
                step.gate(gate, "Tanh" if gate == "c" else "Sigmoid")
            step.node("Mul", ["f", "c"], "fc", "forget")
            step.node("Mul", ["i", "cc"], "ic", "remember")
            step.node("Add", ["fc", "ic"], "c_out", "cell")
            step.node("Tanh", ["c_out"], "tc", "cell_tanh")
            step.node("Mul", ["o", "tc"], "h_out", "hidden")
        elif self.op == "GRU":
            step.gate("z", "Sigmoid")
            step.gate("r", "Sigmoid")
            step.inits.append(numpy_helper.from_array(self.block(self.b, d, 5), step.n("rbh")))
            if self.linear_before_reset:
                step.node("MatMul", ["h", "rh"], "hrh", "h_recurrence")
                step.node("Add", ["hrh", "rbh"], "hrhb", "h_recurrence_bias")
                step.node("Mul", ["r", "hrhb"], "reset", "reset")
            else:
                step.node("Mul", ["r", "h"], "rhs", "reset")
                step.node("MatMul", ["rhs", "rh"], "hrh", "h_recurrence")
                step.node("Add", ["hrh", "rbh"], "reset", "h_recurrence_bias")
            step.node("Add", ["xh", "reset"], "preh", "h_input")
            step.node("Tanh", ["preh"], "hh", "h_tanh")
            step.node("Sub", ["h", "hh"], "dh", "keep")
            step.node("Mul", ["z", "dh"], "zdh", "update")
            step.node("Add", ["hh", "zdh"], "h_out", "hidden")
        else:
            step.gate("i", "Tanh", output="h_out")
        step.node("Identity", ["h_out"], "y", "output")
        ins = ["h", "c"][:len(self.states)] + [f"x{g}" for g in self.gates]
        outs = ["h_out", "c_out"][:len(self.states)] + ["y"]
        return step.graph(ins, outs, self.hidden)


class Step:
    """The nodes of a Scan body under one name scope (see Lowering.body)."""

    def __init__(self, scope: str) -> None:
        self.scope = scope
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def n(self, name: str) -> str:
        return f"{self.scope}/{name}"

    def node(self, op: str, inputs: list[str], output: str, name: str) -> None:
        self.nodes.append(helper.make_node(op, [self.n(i) for i in inputs], [self.n(output)], name=name))

    def gate(self, gate: str, activation: str, output: str | None = None) -> None:
        """activation(x_gate + H R_gate^T), written to `output` (the gate's letter; an LSTM's c gate: cc)."""
        target = output or ("cc" if gate == "c" else gate)
        self.node("MatMul", ["h", f"r{gate}"], f"hr{gate}", f"{gate}_recurrence")
        self.node("Add", [f"x{gate}", f"hr{gate}"], f"pre{gate}", f"{gate}_input")
        self.node(activation, [f"pre{gate}"], target, f"{gate}_{activation.lower()}")

    def graph(self, inputs: list[str], outputs: list[str], hidden: int) -> onnx.GraphProto:
        def value(name: str) -> onnx.ValueInfoProto:
            return helper.make_tensor_value_info(self.n(name), TensorProto.FLOAT, ["batch", hidden])

        return helper.make_graph(self.nodes, self.scope, [value(i) for i in inputs], [value(o) for o in outputs],
                                 self.inits)
