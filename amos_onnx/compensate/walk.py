"""A model walked segment by segment (rewrite.segments) over a few feeds, in named streams that run side by side.

Each stream holds, per feed, the tensors later segments still read; a segment runs on them with the stream's
own extra inputs (switches, biases), and what it makes is stored back once the caller has looked at it (and
perhaps run the segment again with other extra inputs). Every node runs once per stream and run, so walking
all levels costs about one pass of the model per stream, not one per level. When the streams' tensors outgrow
WALK_BYTES, the last feeds are dropped from every stream (one feed at least stays): later segments are measured
on fewer samples rather than memory running out. A stream can also be finished: the rest of the model run from
a segment on, as one model, to the graph's outputs, without storing anything.

The streams walk a switched model (fit.focus.switched_model) with every switch off or every switch on: a segment's
session is built with the switches its run is given fixed (rewrite.switches), one per setting, and only the
current segment's are kept. With the switches as inputs, the If around every gate broke onnxruntime's fusions:
PP-OCRv4 rec's reconstruction on 256 lines took 44 s where it now takes 34 s, for the same file.

Every session runs WALK_THREADS intra-op threads, whatever the machine: onnxruntime splits a node's sums over its
threads, so its outputs depend on how many there are (a Gemm's logits 1 ulp apart at one and two threads flipped
bias correction's checks, and the converted file with them). Where the machine has cores for more, feeds run side
by side (parallel.threads_map), WALK_THREADS cores each.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from amos_onnx.data.dataset import sample_count
from amos_onnx.parallel import cpus, threads_map
from amos_onnx.rewrite.segments import Segment, segment_model
from amos_onnx.rewrite.switches import fix_switches, fixed_values
from amos_onnx.runtime import release_freed_memory, run_checked, user_session

WALK_BYTES = 1 << 30  # the tensors every stream holds, all feeds together, at most (past it feeds are dropped)
# onnxruntime threads of every walk session (the module text): 2, the count the recorded benchmarks' conversions
# ran with on their 2-core machines, where onnxruntime's default is one per core
WALK_THREADS = 2

Tensors = dict[str, np.ndarray]
Made = TypeVar("Made")  # what one feed's run gives


class Walk:
    """Streams `names` of `model` cut into `segments`, each starting from every feed, that hold the graph
    outputs `results` to the end (outputs); `label` names the model in errors, `folder` holds its external data."""

    def __init__(self, model: onnx.ModelProto, segments: list[Segment], feeds: list[Tensors], names: list[str],
                 results: list[str], label: str, folder: Path) -> None:
        self.model, self.segments, self.label, self.folder = model, segments, label, folder
        self.streams: dict[str, list[Tensors]] = {name: [dict(feed) for feed in feeds] for name in names}
        self.counts = [sample_count(feed) for feed in feeds]
        self.sessions: dict[tuple[int, tuple[tuple[str, bool], ...]], ort.InferenceSession] = {}
        self.tail: tuple[tuple[object, ...], Segment, ort.InferenceSession | None] | None = None
        self.last: dict[str, int] = {}  # the last segment that reads each tensor (results: past the last)
        for part, segment in enumerate(segments):
            for name in segment.inputs:
                self.last[name] = part
        for name in results:
            self.last[name] = len(segments)

    @property
    def samples(self) -> int:
        """Samples every stream still holds."""
        return sum(self.counts)

    def _open(self, piece: onnx.ModelProto) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.log_severity_level = 4
        # many sessions take turns: threads spinning after one session's run would hold the cores the next needs
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.enable_mem_pattern = False
        options.enable_cpu_mem_arena = False
        return user_session(piece, self.label, folder=self.folder, options=options, threads=WALK_THREADS)

    def _session(self, part: int, held: Tensors, fixed: dict[str, bool]) -> ort.InferenceSession:
        """Segment `part`'s session with its switches `fixed` (rewrite.switches); only the current segment's are
        kept (the walk goes segment by segment)."""
        key = (part, tuple(sorted(fixed.items())))
        if key not in self.sessions:
            self.sessions = {k: sess for k, sess in self.sessions.items() if k[0] == part}
            segment = self.segments[part]
            types = {name: onnx.TensorProto.BOOL if name in fixed else int(helper.np_dtype_to_tensor_dtype(
                held[name].dtype)) for name in segment.inputs}
            self.sessions[key] = self._open(fix_switches(segment_model(self.model, segment, types), fixed))
        return self.sessions[key]

    def use(self, model: onnx.ModelProto) -> None:
        """Walk the later segments of `model` (the same nodes; other gates or weights): every session is built
        again."""
        self.model = model
        self.sessions.clear()
        self.tail = None

    def _tail(self, part: int, held: Tensors, extra: Tensors, names: list[str],
              fixed: dict[str, bool]) -> tuple[Segment, ort.InferenceSession | None]:
        """Segments `part` to the end as one model making those of `names` they make (onnxruntime plans it as
        one and runs it in one call per feed: the bias checks on PP-OCR rec and det 5-10% faster than segment by
        segment), the switches `fixed` (those of `extra`); the last one built is kept (the bias checks finish
        twice from each part)."""
        key = (part, tuple(names), tuple(sorted(fixed.items())))
        if self.tail is None or self.tail[0] != key:
            nodes = tuple(i for segment in self.segments[part:] for i in segment.nodes)
            made = {out for i in nodes for out in self.model.graph.node[i].output if out}
            inputs = sorted({n for segment in self.segments[part:] for n in segment.inputs} - made)
            tail = Segment(nodes, tuple(inputs), tuple(n for n in names if n in made))
            types = {name: int(helper.np_dtype_to_tensor_dtype((extra[name] if name in extra else held[name]).dtype))
                     for name in tail.inputs}
            sess = self._open(fix_switches(segment_model(self.model, tail, types), fixed)) if tail.outputs else None
            self.tail = (key, tail, sess)
        return self.tail[1], self.tail[2]

    def run(self, part: int, stream: str, extra: Tensors) -> list[Tensors]:
        """Segment `part` on every feed of `stream` with the `extra` inputs (the same for every feed): its
        outputs per feed, not yet stored."""
        segment = self.segments[part]
        if not segment.outputs or not self.streams[stream]:  # nothing anyone reads (a level whose nodes all
            return [{} for _ in self.streams[stream]]  # landed in other segments, say)
        fixed = fixed_values({name: extra[name] for name in segment.inputs if name in extra})
        feeds = [{name: extra[name] if name in extra else held[name] for name in segment.inputs if name not in fixed}
                 for held in self.streams[stream]]
        sess = self._session(part, feeds[0], fixed)  # built here, before the runs go side by side

        def one(feed: Tensors) -> Tensors:
            return dict(zip(segment.outputs, run_checked(sess, list(segment.outputs), feed, self.label)))

        return _side_by_side(one, feeds)

    def finish(self, part: int, stream: str, extra: Tensors, names: list[str]) -> list[list[np.ndarray]]:
        """The graph outputs `names`, per feed, when `stream` runs through segment `part` and every later one
        (as one model, _tail) with the `extra` inputs; the stream itself is left as it was."""
        held_all = self.streams[stream]
        if not held_all:
            return []
        fixed = fixed_values(extra)
        tail, sess = self._tail(part, held_all[0], extra, names, fixed)  # built here, before the runs go side by side

        def one(held: Tensors) -> list[np.ndarray]:
            feed = {name: extra[name] if name in extra else held[name] for name in tail.inputs if name not in fixed}
            made = dict(zip(tail.outputs, run_checked(sess, list(tail.outputs), feed, self.label))) if sess else {}
            return [made[name] if name in made else held[name] for name in names]

        return _side_by_side(one, held_all)

    def store(self, part: int, stream: str, made: list[Tensors]) -> None:
        """Keep a segment's outputs in `stream` and let go of what no later segment reads."""
        for held, outputs in zip(self.streams[stream], made):
            held.update(outputs)
            for name in [n for n in held if self.last.get(n, -1) <= part]:
                del held[name]

    def trim(self) -> None:
        """Drop the last feeds of every stream while the streams hold more than WALK_BYTES, and give what the
        segment's runs freed back to the system (runtime.release_freed_memory)."""
        streams = list(self.streams.values())
        while len(streams[0]) > 1 and sum(a.nbytes for s in streams for held in s for a in held.values()
                                          if isinstance(a, np.ndarray)) > WALK_BYTES:
            for s in streams:
                s.pop()
            self.counts.pop()
        release_freed_memory()

    def seen(self, stream: str, made: list[Tensors], name: str) -> list[np.ndarray]:
        """Tensor `name` per feed of `stream`: as a segment's run just made it (`made`, not yet stored), else as the
        stream holds it (a graph input, which no segment makes)."""
        return [m[name] if name in m else held[name] for m, held in zip(made, self.streams[stream])]

    def outputs(self, stream: str, names: list[str]) -> list[list[np.ndarray]]:
        """The graph outputs `names` per feed of a stream walked to the end."""
        return [[held[name] for name in names] for held in self.streams[stream]]


def _side_by_side(func: Callable[[Tensors], Made], feeds: list[Tensors]) -> list[Made]:
    """[func(feed) for feed in feeds] (at least one feed), as many at once as the machine has WALK_THREADS cores
    for (one at a time on two cores: the walk's runs as they were)."""
    return threads_map(func, feeds, max(1, cpus() // WALK_THREADS))
