"""Where the bytes of an ONNX file go, fp32 against fp16 against fp16 + `compact`, per target model.

    python benchmarks/file_bytes.py [--models det,rec,cls,demo,cnn,encoder] [--out benchmarks/results]

Each model as `targets.py` loads and prepares it (`opset,cleanup,fuse`: the fp32 file), then the
`fp16` pass on it, then `compact` after that. A category's bytes are what the serialized model
loses when that category alone is cleared (so protobuf's own tags and lengths count with it):
tensor payload (weights and Constant values), inner tensor names (every occurrence: node inputs
and outputs, initializer names; graph inputs and outputs excluded), node names, non-tensor
attributes, tensor dims and types, graph inputs/outputs, metadata (metadata_props, producer,
opsets), doc strings, value_info; the rest is framing. Writes file_bytes.{md,json}.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import onnx

import graphopt
from targets import KIND, ROOT, load_models


def _tensors(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    return [*graph.initializer, *(a.t for n in graph.node for a in n.attribute if a.type == onnx.AttributeProto.TENSOR)]


def _inner_names(model: onnx.ModelProto) -> None:
    interface = {v.name for v in [*model.graph.input, *model.graph.output]}
    for node in model.graph.node:
        node.input[:] = [n if n in interface else "" for n in node.input]
        node.output[:] = [n if n in interface else "" for n in node.output]
    for tensor in _tensors(model.graph):
        tensor.ClearField("name")


def _plain_attributes(model: onnx.ModelProto) -> None:
    for node in model.graph.node:
        kept = [a for a in node.attribute if a.type == onnx.AttributeProto.TENSOR]
        del node.attribute[:]
        node.attribute.extend(kept)


def _clear(*fields):
    def clear(message):
        for field in fields:
            message.ClearField(field)
    return clear


CATEGORIES = {
    "tensor payload": lambda m: [t.ClearField("raw_data") for t in _tensors(m.graph)],
    "inner tensor names": _inner_names,
    "node names": lambda m: [n.ClearField("name") for n in m.graph.node],
    "attributes (not tensors)": _plain_attributes,
    "tensor dims and types": lambda m: [(t.ClearField("dims"), t.ClearField("data_type")) for t in _tensors(m.graph)],
    "graph inputs/outputs": lambda m: _clear("input", "output")(m.graph),
    "metadata, producer, opsets": _clear("metadata_props", "producer_name", "producer_version", "opset_import"),
    "doc strings": lambda m: [x.ClearField("doc_string") for x in [m, m.graph, *m.graph.node]],
    "value_info": lambda m: m.graph.ClearField("value_info"),
}


def breakdown(model: onnx.ModelProto) -> dict[str, int]:
    total = model.ByteSize()
    found = {"file": total}
    for category, clear in CATEGORIES.items():
        stripped = copy.deepcopy(model)
        clear(stripped)
        found[category] = total - stripped.ByteSize()
    found["framing (the rest)"] = total - sum(found[c] for c in CATEGORIES)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="det,rec,cls,demo,cnn,encoder")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    rows = []
    for label, (model, calibration, evaluation) in load_models(args.models.split(",")).items():
        passes = (["opset"] if label in KIND else []) + ["cleanup", "fuse"]
        options = {"opset": {"target": 13}} if label in KIND else {}
        fp32 = graphopt.optimize(model, passes=passes, options=options, calibration=calibration, inputs=evaluation).model
        half = graphopt.optimize(fp32, passes=["fp16"], calibration=calibration, inputs=evaluation)
        # compact changes no op (onnxruntime optimizes both files to the same graph): timing it on a
        # shared machine could only roll it back on noise, so the never-slower check is off here.
        compacted = graphopt.optimize(fp32, passes=["fp16", "compact"], calibration=calibration, inputs=evaluation, latency_on="none")
        both = graphopt.optimize(fp32, passes=["compact"], inputs=evaluation, latency_on="none").model
        cosine = compacted.report["passes"][0]["details"]["cosine"]
        variants = {"fp32": fp32, "fp16": half.model, "fp16 + compact": compacted.model, "fp32 + compact": both}
        rows.append({"model": label, "cosine": cosine, **{name: breakdown(m) for name, m in variants.items()}})
        print(label, {name: rows[-1][name]["file"] for name in variants}, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "file_bytes.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["# Where the bytes go: fp32, fp16, fp16 + compact", "", f"`python benchmarks/file_bytes.py {' '.join(sys.argv[1:])}`", "",
             "| model | file × fp32: fp16 / fp16 + compact / (both compacted) | cosine | category | fp32 | fp16 | fp16 + compact |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        base = row["fp32"]["file"]
        ratios = (f"{row['fp16']['file'] / base:.4f} / **{row['fp16 + compact']['file'] / base:.4f}** / "
                  f"({row['fp16 + compact']['file'] / row['fp32 + compact']['file']:.4f})")
        for index, category in enumerate(row["fp32"]):
            head = f"| {row['model']} | {ratios} | {row['cosine']:.6f} |" if index == 0 else "| | | |"
            lines.append(f"{head} {category} | {row['fp32'][category]} | {row['fp16'][category]} | {row['fp16 + compact'][category]} |")
    (out / "file_bytes.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
