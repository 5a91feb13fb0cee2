"""`--emit-precision int8-mixed`: int8 LiteRT pieces where the accuracy allows, float32 pieces where not.

onnx2tf's int8 writer is all or nothing: every op full-integer, activations per tensor. Where
one part of a model cannot be (an op it does not quantize: SQRT of a layer norm, a MatMul of two
activations; a tensor whose per-tensor int8 range loses it: PP-OCRv4 det's stem, where a pointwise
conv reaches ±236 and the depthwise conv after it works within ±6), the whole model misses.

So the whole model is converted full-integer first, and kept where it reaches `TARGET` on the
calibration samples (the result is then `int8`'s). Else the model is cut where at most four
tensors pass between its parts (`tflite_segments`), into at most `MAX_PIECES` pieces spread over
the node order; each piece is converted to int8 on its own inputs' calibration values
(onnxruntime on the calibration samples), and a piece onnx2tf refuses stays float32. Then, on the
calibration samples (the chain run piece by piece: int8 pieces in LiteRT, float ones in
onnxruntime), while the output's cosine against onnxruntime is under `TARGET`, the int8 piece
that costs the most alone (the only int8 piece in an otherwise float chain) becomes float32. The
pieces are joined into one flatbuffer (`tflite_merge`): QUANTIZE/DEQUANTIZE at each int8 piece's
ends, float32 inputs and outputs. The emit then verifies the whole on the verification inputs
at cosine >= 0.99, as for `int8`.

Not for integer-only accelerators (they need `int8`). A model with no cut (a second input
reaching every layer: an encoder's attention mask) is the whole model's int8 or fails as `int8`
does. Pieces cost conversions: det's 12 take 30-40 s on this 2-core host.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx

from graphopt.emit.tflite_merge import chain_flatbuffers
from graphopt.emit.tflite_segments import Piece, cut_into_pieces, cuts, piece_feeds
from graphopt.errors import InputError, VerificationError

__all__ = ["convert_mixed", "MAX_PIECES", "TARGET"]

logger = logging.getLogger(__name__)

MAX_PIECES = 12
TARGET = 0.992  # on the calibration samples; the emit's bar on the verification inputs is 0.99
# the choice runs on up to this many calibration samples: on 8 of rec's 16 it kept pieces that
# reached 0.9928 there and 0.9873 on held-out images (0.9912 on all 16)
_CHOICE_SAMPLES = 32


def convert_mixed(model: onnx.ModelProto, calibration: dict[str, np.ndarray], convert) -> tuple[bytes, dict]:
    """The joined flatbuffer and what was chosen (`convert(model, precision, calibration)` -> TfliteModel).

    The whole model full-integer first: where that holds `TARGET` it is the answer (one piece, as `int8`).
    """
    calibration = {name: np.asarray(array) for name, array in calibration.items()}
    samples = _samples(calibration, [v.name for v in model.graph.input if v.name in calibration])
    names = [v.name for v in model.graph.output]
    whole = _session(model)
    reference = [dict(zip(names, whole.run(names, sample))) for sample in samples]
    refusal, reached = None, 0.0
    try:
        full = convert(model, "int8", calibration)
    except InputError as error:
        full, refusal = None, error
    if full is not None:
        got = _restored(full.flatbuffer, model, samples, reference)
        reached = min(_cosine(reference, got, name) for name in names)
    pieces = cut_into_pieces(model, _spread(sorted(cuts(model)), len(model.graph.node)))
    if reached >= TARGET or len(pieces) == 1:
        if full is None:
            raise refusal  # no cut: as `int8`, onnx2tf's reason
        return full.flatbuffer, {"pieces": 1, "int8_pieces": 1, "int8_nodes": len(model.graph.node), "nodes": len(model.graph.node),
                                 "float_pieces": [], "calibration_cosine": round(reached, 6)}
    logger.debug("int8-mixed: %s; %d pieces", _short(str(refusal)) if refusal else f"full-integer cosine {reached:.4f}", len(pieces))
    inner = {name: piece.originals[name] for piece in pieces for name in piece.inputs if name not in calibration}
    found = piece_feeds(model, calibration, list(dict.fromkeys(inner.values()))) if inner else {}
    values = {**calibration, **{name: found[original] for name, original in inner.items()}}
    int8, refused = [], {}
    for index, piece in enumerate(pieces):
        try:
            int8.append(convert(piece.model, "int8", {name: values[name] for name in piece.inputs}))
        except InputError as error:
            int8.append(None)
            refused[index] = str(error)
            logger.debug("int8-mixed: piece %d (nodes %d-%d) stays float32: %s", index, piece.first_node,
                         piece.first_node + piece.nodes - 1, error)
    sessions = [_session(piece.model) for piece in pieces]
    choice = [flat is not None for flat in int8]

    def cosine(chosen):
        got = _chain(pieces, sessions, int8, chosen, samples)
        return min(_cosine(reference, got, name) for name in reference[0])
    choice, reached = _choose(choice, cosine)
    if not any(choice):
        raise VerificationError(f"int8-mixed: no piece of the model can be int8 at cosine >= {TARGET} on the calibration "
                                f"samples ({len(pieces)} pieces; {len(refused)} refused by onnx2tf's int8 writer)")
    flatbuffers = [int8[i].flatbuffer if choice[i] else convert(piece.model, "fp32", None).flatbuffer for i, piece in enumerate(pieces)]
    int8_nodes = sum(piece.nodes for piece, used in zip(pieces, choice) if used)
    details = {"pieces": len(pieces), "int8_pieces": sum(choice), "int8_nodes": int8_nodes, "nodes": len(model.graph.node),
               "float_pieces": [f"nodes {p.first_node}-{p.first_node + p.nodes - 1}" + (f" ({_short(refused[i])})" if i in refused else "")
                                for i, (p, used) in enumerate(zip(pieces, choice)) if not used],
               "calibration_cosine": round(reached, 6)}
    logger.info("int8-mixed: %d of %d nodes int8 in %d of %d pieces; calibration cosine %.4f",
                int8_nodes, len(model.graph.node), sum(choice), len(pieces), reached)
    return chain_flatbuffers([(flat, piece.inputs, piece.outputs) for flat, piece in zip(flatbuffers, pieces)], names), details


def _choose(choice: list[bool], cosine) -> tuple[list[bool], float]:
    """Pieces made float32, the costliest alone first, until `cosine(choice)` reaches TARGET; all float32 if it never does."""
    choice = list(choice)
    reached = cosine(choice)
    if reached < TARGET and sum(choice) > 1:
        alone = {i: cosine([j == i for j in range(len(choice))]) for i, used in enumerate(choice) if used}
        logger.debug("int8-mixed: cosine %.5f with every piece int8 that can be; each alone: %s", reached, alone)
        for index in sorted(alone, key=alone.get):
            choice[index] = False
            reached = cosine(choice)
            logger.debug("int8-mixed: piece %d float32: cosine %.5f", index, reached)
            if reached >= TARGET or sum(choice) <= 1:
                break
    if reached < TARGET:
        return [False] * len(choice), reached
    return choice, reached


def _spread(cuts: list[int], nodes: int) -> list[int]:
    """At most MAX_PIECES - 1 of `cuts`, each the nearest to an even step through the node order."""
    if not cuts:
        return []
    chosen = {min(cuts, key=lambda cut: abs(cut - nodes * step / MAX_PIECES)) for step in range(1, MAX_PIECES)}
    return sorted(chosen)


def _samples(feeds: dict[str, np.ndarray], names: list[str]) -> list[dict]:
    count = min(_CHOICE_SAMPLES, len(feeds[names[0]]))
    return [{name: feeds[name][i] for name in names} for i in range(count)]


def _session(model: onnx.ModelProto):
    from graphopt.verify.runner import make_session

    return make_session(model)


def _chain(pieces: list[Piece], sessions, int8, chosen, samples):
    """The model's outputs per sample with the `chosen` pieces in LiteRT int8 and the others in onnxruntime."""
    values = [dict(sample) for sample in samples]  # every tensor computed so far, per sample
    for piece, session, flat, use in zip(pieces, sessions, int8, chosen):
        feeds = [{name: value[name] for name in piece.inputs} for value in values]
        if use:
            got = _restored(flat.flatbuffer, piece.model, feeds)
        else:
            got = [dict(zip(piece.outputs, session.run(piece.outputs, feed))) for feed in feeds]
        for value, new in zip(values, got):
            value.update(new)
    return values


def _restored(flatbuffer: bytes, model: onnx.ModelProto, samples: list[dict], like: list[dict] | None = None) -> list[dict]:
    """`flatbuffer`'s outputs on `samples` in the ONNX layout (the shapes of `like`, else the model's declared ones)."""
    from graphopt.emit.tflite import restore_layout, run_tflite

    raw, _ = run_tflite(flatbuffer, samples, model)
    like = like or [{v.name: np.zeros(_shape(model, v.name), np.float32) for v in model.graph.output}] * len(raw)
    return restore_layout(raw, like)[0]


def _shape(model: onnx.ModelProto, name: str) -> tuple[int, ...]:
    value = next(v for v in model.graph.output if v.name == name)
    return tuple(d.dim_value for d in value.type.tensor_type.shape.dim)


def _cosine(reference, got, name) -> float:
    a = np.concatenate([np.ravel(r[name]) for r in reference]).astype(np.float64)
    b = np.concatenate([np.ravel(g[name]) for g in got]).astype(np.float64)
    denominator = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denominator) if denominator else float(np.array_equal(a, b))


def _short(reason: str) -> str:
    return reason.split(": ", 1)[-1][:120]
