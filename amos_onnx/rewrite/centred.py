"""A gate's error centred: the gate's output less its mean difference from the activation's over the run's samples
and positions, per channel (fit.budget's curves where compensation follows: bias correction takes that mean out
through the next layer's bias, and weight reconstruction at least that). Only in the models that measure gates,
never in a converted model.
"""

from __future__ import annotations

import onnx
from onnx import helper

from amos_onnx.find.sites import Site
from amos_onnx.load import default_opset
from amos_onnx.rewrite.graph import Names

REDUCE_AXES_INPUT = 18  # the opset from which ReduceMean takes its axes as an input


def centred_nodes(model: onnx.ModelProto, site: Site, gate: str, activation: str, output: str,
                  names: Names) -> list[onnx.NodeProto]:
    """Nodes making `output` = gate - mean(gate - activation), the mean over every axis but the site's channel
    axis (over every axis where the channel axis or the rank is not known)."""
    tag = f"{site.name}/amos/centred"
    error, mean = names.make(f"{tag}/error"), names.make(f"{tag}/mean")
    nodes = [helper.make_node("Sub", [gate, activation], [error], name=names.make(f"{tag}/sub"))]
    axes = ([a for a in range(site.rank) if a != site.channel_axis]
            if site.rank is not None and site.channel_axis is not None else None)
    if axes is None:
        nodes.append(helper.make_node("ReduceMean", [error], [mean], keepdims=1, name=names.make(f"{tag}/mean")))
    elif default_opset(model) >= REDUCE_AXES_INPUT:
        given = names.make(f"{tag}/axes")
        nodes.append(helper.make_node("Constant", [], [given], name=names.make(f"{tag}/axes"),
                                      value=helper.make_tensor(given, onnx.TensorProto.INT64, [len(axes)], axes)))
        nodes.append(helper.make_node("ReduceMean", [error, given], [mean], keepdims=1,
                                      name=names.make(f"{tag}/mean")))
    else:
        nodes.append(helper.make_node("ReduceMean", [error], [mean], axes=axes, keepdims=1,
                                      name=names.make(f"{tag}/mean")))
    nodes.append(helper.make_node("Sub", [gate, mean], [output], name=names.make(f"{tag}/out")))
    return nodes
