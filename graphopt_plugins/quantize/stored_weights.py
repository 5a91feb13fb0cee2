"""Kept-float layers whose weights are stored int8 anyway: float compute, a quarter of the bytes.

A layer the plan keeps float (int8 compute slower there, or too harmful for the budget) can still
store its weight in 8 bits, per output channel, in one of two forms:

- **fused**: a DequantizeLinear feeding a MatMul or Gemm that alone reads a 2-D weight.
  onnxruntime fuses the pair into MatMulNBits, which on this CPU ran faster than the float
  MatMul (0.55-0.83x on 1x256x1024, 128x512x512 and 26x512x6000, onnxruntime 1.32) but slower
  on a small one (a 64-wide encoder);
- **folded**: `Cast(int8) -> Mul(scale)`, which onnxruntime's constant folding turns back into the
  float weight when the session loads (DequantizeLinear it deliberately leaves alone): the runtime
  runs exactly the float graph (a Conv keeps its prepacked weight, 1.00-1.01x measured), only the
  file is smaller. This is also the form for a weight several layers read (an unrolled LSTM),
  whose DequantizeLinear onnxruntime would copy per reader and not fuse.

The other large float constants (an LSTM's W and R, which no int8 kernel here reads; the
weights in If/Loop bodies) are stored folded alongside. Tried in order: every kept-float layer
fused where it can be, then every one folded, then the folded ones not too harmful for the
budget, then those without the other constants, then the half and the quarter of all whose
weights int8 hurts least. The first that meets the budget and, where latency is measured, runs no slower than the
plan without it (than float, when nothing else is int8; the folded form within the timer's
noise, as it runs the same graph, and untimed on onnxruntime when the graph it builds at load
holds the same ops as without it: folded away, nothing is left to time) is kept. Judged on half the room the plan left in the budget
(`_half_the_room`).
"""

from __future__ import annotations

import collections
import fnmatch
import math
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphopt import convert, graph_queries
from graphopt.proto_walk import serialized_bytes
from graphopt_plugins.quantize.numerics import quantize_per_channel
from graphopt_plugins.quantize.rewrite import UniqueNames, apply_weight_only
from graphopt_plugins.quantize.targets import WEIGHT_OPS, Target

__all__ = ["store_kept_weights", "store_weights", "other_weights", "NOTHING_STORED"]

NOTHING_STORED = ((), "targets")  # planner.stored: (kept-float target indices, form) when nothing is stored

_FUSED_OPS = ("MatMul", "Gemm")  # read through MatMulNBits on onnxruntime
# The folded form runs the float graph once loaded, so a measured difference within this ratio is
# the timer's noise. The fused form is tried for speed, so it must not be slower.
_TOLERANCE = 1.02
_PLAIN = 0.10  # a timing ends after two rounds when the two medians are this far apart


def store_weights(graph: gs.Graph, targets: list[Target], form: str, exclude=()) -> None:
    """Stores the weights of `targets` int8 per channel: MatMulNBits-fused where `form` is "fused"
    and the layer alone reads a 2-D weight, else folded; unless `form` is "targets", also the other
    large float constants (`other_weights`), folded."""
    readers: dict[int, int] = {}
    for target in targets:
        weight = graph.nodes[target.index].inputs[1]
        readers[id(weight)] = readers.get(id(weight), 0) + 1
    # A weight some other node reads too would stay float beside its int8 copy: left alone.
    targets = [t for t in targets if readers[id(graph.nodes[t.index].inputs[1])] == len(graph.nodes[t.index].inputs[1].outputs)]
    alone = [t for t in targets if form == "fused" and t.op in _FUSED_OPS and len(t.weight_shape) == 2
             and readers[id(graph.nodes[t.index].inputs[1])] == 1]
    apply_weight_only(graph, alone, 8, 32)
    names, made = UniqueNames(graph), {}
    for target in targets:
        if target not in alone:
            node = graph.nodes[target.index]
            weight = node.inputs[1]
            if id(weight) not in made:
                made[id(weight)] = _folded(graph, names, weight, target.axis)
            node.inputs[1] = made[id(weight)]
    for owner, readers, axis in other_weights(graph, exclude) if form != "targets" else ():
        node, slot = readers[0]
        restored = _folded(owner, names, node.inputs[slot], axis)
        for node, slot in readers:
            node.inputs[slot] = restored


def other_weights(graph: gs.Graph, exclude=()) -> list[tuple[gs.Graph, list[tuple[gs.Node, int]], int]]:
    """(graph to restore it in, its (reader, input slot)s, axis of one scale per slice) of each
    float32 constant of >= 1024 values and two or more dimensions that no Q/DQ, Gather or excluded
    node reads, nor a main-graph Conv/Gemm/MatMul as its weight (the layers the plan decides on):
    an LSTM/GRU/RNN's W and R, the weights of layers in If/Loop bodies, a MatMul's constant first
    input. Sliced along the second-to-last axis (the gate rows of W [directions, 4*hidden, input]).
    A constant read in one body only is restored there, else in the main graph."""
    uses: dict[int, list] = {}
    for owner in graph_queries.iter_graphs(graph, functions=False):
        for node in owner.nodes:
            for slot, tensor in enumerate(node.inputs):
                if isinstance(tensor, gs.Constant):
                    uses.setdefault(id(tensor), []).append((owner, node, slot))
    found = []
    for triples in uses.values():
        tensor = triples[0][1].inputs[triples[0][2]]
        if tensor.dtype != np.float32 or len(tensor.shape) < 2 or int(np.prod(tensor.shape)) < 1024:
            continue
        if any(n.op in ("QuantizeLinear", "DequantizeLinear", "Gather") or (owner is graph and n.op in WEIGHT_OPS and slot > 0)
               or n.op in exclude or any(fnmatch.fnmatchcase(n.name, pattern) for pattern in exclude) for owner, n, slot in triples):
            continue
        owners = {id(owner): owner for owner, _, _ in triples}
        found.append((next(iter(owners.values())) if len(owners) == 1 else graph, [(n, slot) for _, n, slot in triples],
                      len(tensor.shape) - 2))
    return found


def _folded(graph: gs.Graph, names: UniqueNames, weight: gs.Constant, axis: int) -> gs.Variable:
    """`Cast(int8 weight) -> Mul(scale per slice along axis)`: the float weight again, once folded."""
    quantized, scale = quantize_per_channel(graph_queries.constant_value(weight), axis)
    shape = [1] * quantized.ndim
    shape[axis] = -1
    as_float = gs.Variable(names(f"{weight.name}_float"), dtype=np.float32, shape=list(weight.shape))
    restored = gs.Variable(names(f"{weight.name}_restored"), dtype=np.float32, shape=list(weight.shape))
    graph.nodes.append(gs.Node("Cast", names(f"{weight.name}_Cast"), attrs={"to": onnx.TensorProto.FLOAT},
                               inputs=[gs.Constant(names(f"{weight.name}_int8"), quantized)], outputs=[as_float]))
    graph.nodes.append(gs.Node("Mul", names(f"{weight.name}_scale"), outputs=[restored],
                               inputs=[as_float, gs.Constant(names(f"{weight.name}_scales"), scale.reshape(shape))]))
    return restored


def store_kept_weights(planner, chosen: list[int], metrics: dict, evaluate, timed: bool) -> tuple[dict, dict]:
    """Sets `planner.stored` (indices, form) to the kept-float layers whose weights are stored int8,
    if that pays; returns (the metrics of the plan as it ends up, each attempt for the report)."""
    wanted = set(chosen)
    candidates = tuple(t.index for t in planner.targets if t.index not in wanted)
    harmless = tuple(i for i in candidates if not planner.rows[i]["why"].startswith("too harmful"))
    fusable = any(planner.rows[i]["op"] in _FUSED_OPS for i in candidates)
    others = bool(other_weights(convert.import_graph(planner.model), planner.options.exclude)) and not planner.options.include
    attempts = []  # (kept-float targets stored, form), from the most stored to the least
    if candidates or others:
        attempts += [(candidates, "fused")] if fusable else []
        attempts.append((candidates, "folded"))
        attempts += [(harmless, "folded")] if harmless != candidates else []
        attempts += [(harmless, "targets")] if others and harmless else []
        # Then the half, and the quarter, whose weights lose least to int8 (per-channel SQNR).
        units = [members for members in planner.units.values() if members[0] in set(candidates)]  # a shared weight: all or none
        ranked = sorted(units, key=lambda members: _or_lowest(planner.rows[members[0]]["weight_sqnr_db"]), reverse=True)
        attempts += [(tuple(sorted(i for members in ranked[: len(ranked) // share] for i in members)), "targets")
                     for share in (2, 4) if len(ranked) >= share]
        attempts = [a for a in dict.fromkeys(attempts) if a[0] or (others and a[1] != "targets")]  # each stores something
    trials, floor = [], _half_the_room(planner.budget, metrics)
    for attempt in attempts:
        planner.stored = attempt
        judged = evaluate(chosen)
        ok = judged["ok"] and all(judged[key] >= bound for key, bound in floor.items())
        trial = {"layers": len(attempt[0]), "form": attempt[1], "cosine": judged["cosine"], "ok": ok}
        trials.append(trial)
        if ok and (not timed or _not_slower(planner, chosen, trial)):
            for index in attempt[0]:
                row = planner.rows[index]
                row.update(decision="int8 weights", why=f"{row['why']}: float compute, weight stored int8 ({attempt[1]})")
            return judged, {"layers": len(attempt[0]), "form": attempt[1], "other_weights": attempt[1] != "targets" and others,
                            "trials": trials}
    planner.stored = NOTHING_STORED
    return metrics, {"layers": 0, "trials": trials}


def _or_lowest(value) -> float:
    return -math.inf if value is None else value


def _half_the_room(budget, metrics: dict) -> dict[str, float]:
    """Lower bounds on cosine and SQNR halfway between the budget's and the plan's own: storing
    weights may use half the room the plan left, not all of it, since a plan at the edge of its
    budget on the judged samples falls below it on the next inputs (held out, the corpus's
    disjoint samples: PP-OCRv4 rec 0.9929 -> 0.985 when the step took it all)."""
    floor = {}
    if budget.cos is not None:
        floor["cosine"] = (budget.cos + metrics["cosine"]) / 2
    if budget.sqnr is not None:
        floor["sqnr_db"] = (budget.sqnr + min(metrics["sqnr_db"], budget.sqnr + 60.0)) / 2
    return floor


def _not_slower(planner, chosen: list[int], trial: dict) -> bool:
    """Whether the plan with `planner.stored` runs no slower than without (noted in `trial`)."""
    stored = planner.stored
    planner.stored = NOTHING_STORED
    base = planner.build(chosen) if chosen else planner.model
    planner.stored = stored
    if stored[1] == "folded" and planner.latency.name == "host-ort" and _folded_away(base, planner.build(chosen)):
        # onnxruntime runs the very graph it ran before: timing it again could only measure noise,
        # which on a small model is larger than the tolerance (an LSTM CRNN's weights were refused)
        trial.update(against="int8 plan" if chosen else "float", folded_at_load=True)
        return True
    feed = planner.timing_feed()
    base_ms, stored_ms = planner._medians(base, planner.build(chosen), feed, feed, "quantize: stored weights",
                                          seconds=2.0, rounds=5, margin=(1.0, _PLAIN))
    trial.update(base_ms=round(base_ms, 3), ms=round(stored_ms, 3), against="int8 plan" if chosen else "float")
    return stored_ms <= (1.0 if stored[1] == "fused" else _TOLERANCE) * base_ms


def _folded_away(base: onnx.ModelProto, stored: onnx.ModelProto) -> bool:
    """Whether onnxruntime's load-time constant folding turns every stored weight back to float:
    the two graphs it builds hold the same ops (None of the Cast/Mul pairs left)."""
    try:
        return _loaded_ops(base) == _loaded_ops(stored)
    except Exception:  # noqa: BLE001 - a graph onnxruntime cannot save is timed instead
        return False


def _loaded_ops(model: onnx.ModelProto) -> collections.Counter:
    """The op types of the graph onnxruntime builds from `model` at load (extended optimizations)."""
    import onnxruntime as ort

    data = serialized_bytes(model)
    if data is None:
        raise ValueError("too large to save an optimized copy of")
    with tempfile.TemporaryDirectory(prefix="graphopt-folded-") as folder:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(Path(folder) / "loaded.onnx")
        options.log_severity_level = 4
        ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        loaded = onnx.load(options.optimized_model_filepath, load_external_data=False)
    return collections.Counter((node.domain, node.op_type) for node in loaded.graph.node)
