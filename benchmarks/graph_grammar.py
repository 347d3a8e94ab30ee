"""The networks graph_fuzz.py converts: valid ONNX models built from a seeded grammar, each a function of the seed
and the case number alone, with their inputs' shapes (without the batch).

- cnn: images (C, H, W) or vectors through convolutions, batch norms, residual adds, concatenations,
  squeeze-excitation products, pooling, Gemm and MatMul + Add layers, layer norms; every activation the converter
  knows (SiLU and erf-GELU as exporters write them) and two it does not (Abs, Sin); one or two inputs.
- blocks: token sequences (T, D) through one-head self-attention with a residual add and a layer norm, MLPs,
  activations computed in float16 or double between Casts (only kernels onnxruntime's CPU provider has), and If
  branches on mean(x) > 0.

Both end in a softmax head, an integer ArgMax output alone, or the features, and now and then a gate's output as a
graph output too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Activations: op, the opset it needs, attributes; "silu" and "gelu_erf" are written as the exporters write them.
ACTIVATIONS: list[tuple[str, int, dict[str, object]]] = [
    ("Relu", 13, {}), ("LeakyRelu", 13, {"alpha": 0.1}), ("Sigmoid", 13, {}), ("Tanh", 13, {}), ("Elu", 13, {}),
    ("Selu", 13, {}), ("Softplus", 13, {}), ("Softsign", 13, {}), ("HardSigmoid", 13, {}), ("Celu", 13, {}),
    ("HardSwish", 14, {}), ("Mish", 18, {}), ("Gelu", 20, {}), ("relu6", 13, {}), ("silu", 13, {}),
    ("gelu_erf", 13, {}), ("Abs", 13, {}), ("Sin", 13, {})]


@dataclass
class Net:
    """A network under construction: nodes, initializers and the shape of each tensor (without the batch)."""

    rng: np.random.Generator
    opset: int
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    gates: list[str] = field(default_factory=list)  # activation outputs, candidates for graph outputs
    count: int = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def const(self, array: np.ndarray, prefix: str = "w") -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
        return name

    def int64s(self, values: list[int]) -> str:
        name = self.name("axes")
        self.inits.append(numpy_helper.from_array(np.array(values, np.int64), name))
        return name

    def node(self, op: str, inputs: list[str], shape: tuple[int, ...], **attrs: object) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        self.shapes[out] = shape
        return out

    def weight(self, shape: tuple[int, ...], fan_in: int) -> str:
        return self.const(self.rng.normal(0, float(self.rng.choice([0.5, 1.0, 2.0])) / np.sqrt(fan_in), shape))

    def activation(self, x: str) -> str:
        usable = [a for a in ACTIVATIONS if a[1] <= self.opset]
        op, _, attrs = usable[int(self.rng.integers(len(usable)))]
        shape = self.shapes[x]
        if op == "relu6":
            out = self.node("Clip", [x, self.const(np.array(0.0)), self.const(np.array(6.0))], shape)
        elif op == "silu":
            out = self.node("Mul", [x, self.node("Sigmoid", [x], shape)], shape)
        elif op == "gelu_erf":
            half = self.node("Mul", [x, self.const(np.array(0.5))], shape)
            erf = self.node("Erf", [self.node("Div", [x, self.const(np.array(np.sqrt(2.0)))], shape)], shape)
            out = self.node("Mul", [half, self.node("Add", [erf, self.const(np.array(1.0))], shape)], shape)
        else:
            out = self.node(op, [x], shape, **attrs)
        self.gates.append(out)
        return out

    # --- image layers: tensors (C, H, W) ---

    def conv(self, x: str, cout: int, kernel: int = 3) -> str:
        c, h, w = self.shapes[x]
        inputs = [x, self.weight((cout, c, kernel, kernel), c * kernel * kernel)]
        if self.rng.random() < 0.7:
            inputs.append(self.const(self.rng.normal(0, 0.2, cout)))
        return self.node("Conv", inputs, (cout, h, w), pads=[kernel // 2] * 4)

    def batch_norm(self, x: str) -> str:
        c = self.shapes[x][0]
        stats = [self.rng.uniform(0.5, 1.5, c), self.rng.normal(0, 0.2, c), self.rng.normal(0, 0.2, c),
                 self.rng.uniform(0.5, 2.0, c)]
        return self.node("BatchNormalization", [x, *(self.const(s) for s in stats)], self.shapes[x])

    def image_layer(self, x: str) -> str:
        c, h, w = self.shapes[x]
        kind = ["conv", "conv_bn", "residual", "concat", "se", "pool", "act"][int(self.rng.integers(7))]
        if kind == "pool" and h >= 4:
            op = "MaxPool" if self.rng.random() < 0.5 else "AveragePool"
            return self.node(op, [x], (c, h // 2, w // 2), kernel_shape=[2, 2], strides=[2, 2])
        if kind == "residual":
            inner = self.conv(self.activation(self.conv(x, c)), c)
            return self.activation(self.node("Add", [x, inner], (c, h, w)))
        if kind == "concat":
            other = self.activation(self.conv(x, int(self.rng.integers(1, 5)), kernel=1))
            return self.node("Concat", [x, other], (c + self.shapes[other][0], h, w), axis=1)
        if kind == "se":
            r = max(1, c // 2)
            pooled = self.node("GlobalAveragePool", [x], (c, 1, 1))
            s = self.activation(self.conv(pooled, r, kernel=1))
            s = self.node("Sigmoid", [self.conv(s, c, kernel=1)], (c, 1, 1))
            self.gates.append(s)
            return self.node("Mul", [x, s], (c, h, w))
        if kind == "act":
            return self.activation(x)
        y = self.conv(x, int(self.rng.integers(2, 9)))
        return self.activation(self.batch_norm(y) if kind == "conv_bn" else y)

    # --- vector layers: tensors (F,) ---

    def linear(self, x: str, out: int) -> str:
        f = self.shapes[x][0]
        w, b = self.weight((f, out), f), self.const(self.rng.normal(0, 0.2, out), "b")
        if self.rng.random() < 0.5:
            return self.node("Gemm", [x, w, b], (out,))
        return self.node("Add", [self.node("MatMul", [x, w], (out,)), b], (out,))

    def vector_layer(self, x: str) -> str:
        f = self.shapes[x][0]
        kind = ["linear", "residual", "norm", "act"][int(self.rng.integers(4))]
        if kind == "residual":
            inner = self.linear(self.activation(self.linear(x, f)), f)
            return self.node("Add", [x, inner], (f,))
        if kind == "norm" and self.opset >= 17:
            scale, bias = self.const(self.rng.uniform(0.5, 1.5, f)), self.const(self.rng.normal(0, 0.1, f))
            return self.activation(self.node("LayerNormalization", [x, scale, bias], (f,), axis=-1))
        if kind == "act":
            return self.activation(x)
        return self.activation(self.linear(x, int(self.rng.integers(2, 9))))


# --- sequence layers (the "blocks" grammar): tensors (T, D) ---

def matmul(net: Net, x: str, out: int, bias: bool = True) -> str:
    t, d = net.shapes[x]
    y = net.node("MatMul", [x, net.weight((d, out), d)], (t, out))
    return net.node("Add", [y, net.const(net.rng.normal(0, 0.2, out), "b")], (t, out)) if bias else y


def attention(net: Net, x: str) -> str:
    """One head of self-attention with a residual add and a layer norm (as transformer exporters write it)."""
    t, d = net.shapes[x]
    q, k, v = (matmul(net, x, d) for _ in range(3))
    scores = net.node("MatMul", [q, net.node("Transpose", [k], (d, t), perm=[0, 2, 1])], (t, t))
    scores = net.node("Mul", [scores, net.const(np.array(1 / np.sqrt(d)))], (t, t))
    mixed = net.node("MatMul", [net.node("Softmax", [scores], (t, t), axis=-1), v], (t, d))
    added = net.node("Add", [x, matmul(net, mixed, d)], (t, d))
    return layer_norm(net, added) if net.opset >= 17 else added


def layer_norm(net: Net, x: str) -> str:
    d = net.shapes[x][-1]
    scale, bias = net.const(net.rng.uniform(0.5, 1.5, d)), net.const(net.rng.normal(0, 0.1, d))
    return net.node("LayerNormalization", [x, scale, bias], net.shapes[x], axis=-1)


def mlp(net: Net, x: str) -> str:
    d = net.shapes[x][-1]
    return net.node("Add", [x, matmul(net, net.activation(matmul(net, x, int(net.rng.integers(2, 13)))), d)],
                    net.shapes[x])


def cast_detour(net: Net, x: str) -> str:
    """An activation computed in float16 or double between two Casts (the converter keeps its gate in float32)."""
    to = int(net.rng.choice([TensorProto.FLOAT16, TensorProto.DOUBLE]))
    ops = ["Relu", "Sigmoid", "Tanh"]  # onnxruntime's CPU kernels for double; more run in float16
    if to == TensorProto.FLOAT16:
        ops += ["LeakyRelu", "Elu", "Softplus"] + (["HardSwish"] if net.opset >= 14 else []) + (
            ["Gelu"] if net.opset >= 20 else [])
    op = ops[int(net.rng.integers(len(ops)))]
    inner = net.node(op, [net.node("Cast", [x], net.shapes[x], to=to)], net.shapes[x])
    return net.node("Cast", [inner], net.shapes[x], to=TensorProto.FLOAT)


def branches(net: Net, x: str) -> str:
    """If(mean(x) > 0): an activation in each branch, read from the outer scope."""
    shape = net.shapes[x]
    cond = net.node("Greater", [net.node("ReduceMean", [x], (), keepdims=0), net.const(np.array(0.0))], ())
    bodies = []
    for branch in ("then", "else"):
        sub = Net(net.rng, net.opset, shapes=dict(net.shapes), count=net.count)
        out = sub.activation(x)
        net.count = sub.count
        bodies.append(helper.make_graph(sub.nodes, f"{branch}{net.count}", [],
                                        [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], sub.inits))
    name = net.name("if")
    net.nodes.append(helper.make_node("If", [cond], [name], name=name, then_branch=bodies[0],
                                      else_branch=bodies[1]))
    net.shapes[name] = shape
    return name


RECURRENT_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def recurrent(net: Net, x: str) -> str:
    """An LSTM, GRU or RNN over the sequence (forward, reverse or both ways; a GRU's reset either way), as exporters
    write one: the sequence axis first, then back, both directions' outputs side by side and a dense layer."""
    t, d = net.shapes[x]
    op = ["LSTM", "GRU", "RNN"][int(net.rng.integers(3))]
    direction = ["forward", "reverse", "bidirectional"][int(net.rng.integers(3))]
    dirs, gates = 2 if direction == "bidirectional" else 1, RECURRENT_GATES[op]
    attrs: dict[str, object] = {"hidden_size": d, "direction": direction}
    if op == "GRU" and net.rng.random() < 0.5:
        attrs["linear_before_reset"] = 1
    weights = [net.const(net.rng.normal(0, scale / np.sqrt(d), (dirs, gates * d, d))) for scale in (1.0, 0.5)]
    bias = net.const(net.rng.normal(0, 0.2, (dirs, 2 * gates * d)), "b")
    steps = net.node("Transpose", [x], (t, d), perm=[1, 0, 2])
    y = net.node(op, [steps, *weights, bias], (t, d), **attrs)  # (T, directions, N, D)
    back = net.node("Transpose", [y], (t, d), perm=[2, 0, 1, 3])
    flat = net.node("Reshape", [back, net.int64s([0, 0, -1])], (t, dirs * d))
    return matmul(net, flat, d) if dirs == 2 else flat


def sequence_layer(net: Net, x: str) -> str:
    kind = ["attention", "mlp", "cast", "if", "act", "recurrent"][int(net.rng.integers(6))]
    if kind == "recurrent":
        return recurrent(net, x)
    if kind == "attention":
        return attention(net, x)
    if kind == "mlp":
        return mlp(net, x)
    if kind == "cast":
        return cast_detour(net, x)
    if kind == "if":
        return branches(net, x)
    return net.activation(x)


def build_blocks(case: int, seed: int) -> tuple[onnx.ModelProto, dict[str, tuple[int, ...]]]:
    """The "blocks" grammar: a sequence input (N, T, D) through attention, MLP, Cast-detour, If and recurrent
    layers, then a mean over T and a dense head."""
    rng = np.random.default_rng([seed, case, 3])
    net = Net(rng, int(rng.choice([13, 17, 18, 20])))
    shape = (int(rng.integers(2, 5)), int(rng.choice([4, 6, 8])))
    net.shapes["x"] = shape
    x = "x"
    for _ in range(int(rng.integers(1, 5))):
        x = sequence_layer(net, x)
    pooled = net.node("ReduceMean", [x], (shape[1],), axes=[1], keepdims=0) if net.opset < 18 else net.node(
        "ReduceMean", [x, net.int64s([1])], (shape[1],), keepdims=0)
    return finish(net, rng, case, pooled, {"x": shape})


def build(case: int, seed: int) -> tuple[onnx.ModelProto, dict[str, tuple[int, ...]]]:
    """Case `case`'s network (the same for the same seed) and its inputs' shapes (without the batch)."""
    rng = np.random.default_rng([seed, case])
    net = Net(rng, int(rng.choice([13, 17, 18, 20])))
    image = rng.random() < 0.6
    shape = ((int(rng.integers(1, 5)), int(rng.choice([4, 6, 8])), int(rng.choice([4, 6, 8]))) if image
             else (int(rng.integers(2, 9)),))
    inputs = {"x": shape}
    net.shapes["x"] = shape
    x = "x"
    if rng.random() < 0.2:  # a second input, added in
        inputs["x2"] = shape
        net.shapes["x2"] = shape
        x = net.node("Add", ["x", "x2"], shape)
    for _ in range(int(rng.integers(1, 6))):
        x = net.image_layer(x) if len(net.shapes[x]) == 3 else net.vector_layer(x)
    if len(net.shapes[x]) == 3:
        if rng.random() < 0.5:
            x = net.node("GlobalAveragePool", [x], (net.shapes[x][0], 1, 1))
        x = net.node("Flatten", [x], (int(np.prod(net.shapes[x])),))
        for _ in range(int(rng.integers(0, 3))):
            x = net.vector_layer(x)
    return finish(net, rng, case, x, inputs)


def finish(net: Net, rng: np.random.Generator, case: int, x: str,
           inputs: dict[str, tuple[int, ...]]) -> tuple[onnx.ModelProto, dict[str, tuple[int, ...]]]:
    """The head (softmax, an integer ArgMax, or the features), maybe a gate's output as a graph output too, and
    the checked model."""
    outputs: list[tuple[str, int]] = []
    head = rng.random()
    if head < 0.3:
        logits = net.linear(x, int(rng.integers(2, 6)))
        x = net.node("Softmax", [logits], net.shapes[logits], axis=-1)
    elif head < 0.45:  # an integer output only
        argmax = net.node("ArgMax", [net.linear(x, int(rng.integers(2, 6)))], (1,), axis=1)
        outputs.append((argmax, TensorProto.INT64))
        x = ""
    if x:
        outputs.append((x, TensorProto.FLOAT))
    if net.gates and rng.random() < 0.3:  # a gate's output is a graph output too
        gate = net.gates[int(rng.integers(len(net.gates)))]
        if gate not in dict(outputs):
            outputs.append((gate, TensorProto.FLOAT))
    graph = helper.make_graph(
        net.nodes, f"fuzz{case}",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", *s]) for name, s in inputs.items()],
        [helper.make_tensor_value_info(name, dtype, ["N", *net.shapes[name]]) for name, dtype in outputs], net.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", net.opset)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model, inputs


# cnn: images or vectors through convolutions, residual, concatenated and squeeze-excitation blocks, dense layers;
# blocks: token sequences through self-attention, MLPs, activations computed in float16 or double between Casts,
# If branches, and LSTM, GRU and RNN layers
GRAMMARS = {"cnn": build, "blocks": build_blocks}
