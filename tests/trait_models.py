"""Small models with the traits real exports have and the development set lacks.

Each builder names one trait a user's model brings to graphopt on the first try: dynamic input
dims, an old opset, a YOLO-style head that concatenates pixel-scale boxes with 0-1 scores, an
LSTM, an If whose branches hold weights, a declared output shape the model does not produce,
an already-quantized graph, a trained-looking encoder whose LayerNorm carries outlier
channels, a classifier whose softmax is saturated. Tests of every pass use them, so a result holds on traits, not on one model.

torch is a test-only dependency, imported lazily; exports are cached per session (as bytes)
and every call returns a fresh ModelProto the caller may mutate.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
from onnx import helper

from torch_models import _cnn_module, _export, _seeded, _torch, _transformer_module, cnn_feeds, transformer_feeds

__all__ = [
    "dynamic_cnn",
    "dynamic_transformer",
    "yolo_like",
    "yolo_feeds",
    "YOLO_CLASSES",
    "crnn_lstm",
    "crnn_feeds",
    "if_with_weights",
    "if_feeds",
    "cond_model",
    "with_wrong_output_shape",
    "prequantized_dynamic",
    "prequantized_qdq",
    "encoder_with_outliers",
    "set_input_dims",
    "confident_classifier",
]

YOLO_CLASSES = 3


def _export_dynamic(module, args, opset: int, input_names, output_names, dynamic_axes) -> onnx.ModelProto:
    """TorchScript export with symbolic axes: the exporter older opsets (11, 12) still need."""
    import io
    import warnings

    torch = _torch()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, buffer, dynamo=False, opset_version=opset, input_names=input_names,
                          output_names=output_names, dynamic_axes=dynamic_axes)
    return onnx.load_from_string(buffer.getvalue())


# --- dynamic dims, old opsets --------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _dynamic_cnn_bytes(opset: int, seed: int) -> bytes:
    torch = _torch()
    example = torch.from_numpy(cnn_feeds(size=64)["image"])
    axes = {"image": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}}
    return _export_dynamic(_cnn_module(seed), (example,), opset, ["image"], ["logits"], axes).SerializeToString()


def dynamic_cnn(opset: int = 17, seed: int = 0) -> onnx.ModelProto:
    """The MobileNet-style CNN of `torch_models.cnn` with symbolic batch, height and width.

    Input `image` ("batch", 3, "height", "width"); output `logits` ("batch", 10). At opset 11/12
    HardSwish is exported decomposed (HardSigmoid·x), as old exports carry it.
    """
    return onnx.load_from_string(_dynamic_cnn_bytes(opset, seed))


@functools.lru_cache(maxsize=None)
def _dynamic_transformer_bytes(opset: int, seed: int, layers: int) -> bytes:
    torch = _torch()
    feeds = transformer_feeds(2, 16, 100)
    module = _transformer_module(seed, vocab=100, width=32, heads=4, layers=layers, gelu="none")
    args = (torch.from_numpy(feeds["ids"]), torch.from_numpy(feeds["mask"]))
    axes = {"ids": {0: "batch", 1: "sequence"}, "mask": {0: "batch", 1: "sequence"}, "hidden": {0: "batch", 1: "sequence"}}
    return _export_dynamic(module, args, opset, ["ids", "mask"], ["hidden"], axes).SerializeToString()


def dynamic_transformer(opset: int = 17, seed: int = 0, layers: int = 2) -> onnx.ModelProto:
    """The BERT-style encoder of `torch_models.transformer` with symbolic batch and sequence.

    Inputs `ids`, `mask` ("batch", "sequence") int64 below 100; output `hidden` (…, 32). At
    opset < 17 LayerNorm is exported decomposed.
    """
    return onnx.load_from_string(_dynamic_transformer_bytes(opset, seed, layers))


# --- a YOLO-style detector ------------------------------------------------------------------

def _yolo_module(seed: int, classes: int):
    torch = _seeded(seed)
    nn = torch.nn

    class ConvBnSiLU(nn.Module):
        def __init__(self, cin, cout, k=1, s=1):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, k, s, k // 2, bias=False)
            self.bn = nn.BatchNorm2d(cout)

        def forward(self, x):
            return nn.functional.silu(self.bn(self.conv(x)))

    class Bottleneck(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.a, self.b = ConvBnSiLU(c, c, 3), ConvBnSiLU(c, c, 3)

        def forward(self, x):
            return x + self.b(self.a(x))

    class C2f(nn.Module):
        # YOLOv8's block: split the channels, run bottlenecks on one half, concatenate all.
        def __init__(self, cin, cout, n=1):
            super().__init__()
            self.half = cout // 2
            self.stem = ConvBnSiLU(cin, 2 * self.half)
            self.blocks = nn.ModuleList(Bottleneck(self.half) for _ in range(n))
            self.merge = ConvBnSiLU((2 + n) * self.half, cout)

        def forward(self, x):
            parts = list(self.stem(x).split((self.half, self.half), 1))
            for block in self.blocks:
                parts.append(block(parts[-1]))
            return self.merge(torch.cat(parts, 1))

    class SPPF(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.reduce, self.merge = ConvBnSiLU(c, c // 2), ConvBnSiLU(2 * c, c)
            self.pool = nn.MaxPool2d(5, 1, 2)

        def forward(self, x):
            x = self.reduce(x)
            p1 = self.pool(x)
            p2 = self.pool(p1)
            return self.merge(torch.cat((x, p1, p2, self.pool(p2)), 1))

    class Detector(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = ConvBnSiLU(3, 8, 3, 2)
            self.down1 = nn.Sequential(ConvBnSiLU(8, 16, 3, 2), C2f(16, 16))          # stride 4
            self.down2 = nn.Sequential(ConvBnSiLU(16, 32, 3, 2), C2f(32, 32))         # stride 8
            self.down3 = nn.Sequential(ConvBnSiLU(32, 32, 3, 2), C2f(32, 32), SPPF(32))  # stride 16
            self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
            self.fuse = C2f(64, 32)
            self.box = nn.ModuleList((nn.Conv2d(32, 4, 1), nn.Conv2d(32, 4, 1)))
            self.cls = nn.ModuleList((nn.Conv2d(32, classes, 1), nn.Conv2d(32, classes, 1)))
            with torch.no_grad():  # a trained head: scores mostly low, a few confident
                for layer in self.cls:
                    layer.bias.fill_(-2.0)

        def decode(self, x, level, stride):
            batch, _, height, width = x.shape
            ys = torch.arange(height, dtype=torch.float32)
            xs = torch.arange(width, dtype=torch.float32)
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
            centres = torch.stack((grid_x, grid_y), 0).reshape(1, 2, height * width) + 0.5
            raw = self.box[level](x).reshape(batch, 4, height * width)
            xy = (centres + raw[:, :2].tanh()) * stride          # pixels
            wh = torch.exp(raw[:, 2:].clamp(-4, 4)) * stride      # pixels
            scores = torch.sigmoid(self.cls[level](x)).reshape(batch, -1, height * width)
            return torch.cat((xy, wh, scores), 1)

        def forward(self, image):
            p3 = self.down2(self.down1(self.stem(image)))
            p4 = self.down3(p3)
            p3 = self.fuse(torch.cat((self.up(p4), p3), 1))
            return torch.cat((self.decode(p3, 0, 8.0), self.decode(p4, 1, 16.0)), 2)

    from torch_models import _randomize_batchnorm

    module = Detector().eval()
    _randomize_batchnorm(module)
    return module


def yolo_feeds(batch: int = 1, size: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    """Images in [0, 1], as a detector's preprocessing leaves them."""
    rng = np.random.default_rng(seed)
    return {"images": rng.random((batch, 3, size, size), dtype=np.float32)}


@functools.lru_cache(maxsize=None)
def _yolo_bytes(opset: int, seed: int, dynamic: bool, exporter: str) -> bytes:
    torch = _torch()
    example = torch.from_numpy(yolo_feeds()["images"])
    module = _yolo_module(seed, YOLO_CLASSES)
    if exporter == "dynamo" or not dynamic:
        return _export(module, (example,), exporter, opset, ["images"], ["output0"]).SerializeToString()
    axes = {"images": {0: "batch", 2: "height", 3: "width"}, "output0": {0: "batch", 2: "anchors"}}
    return _export_dynamic(module, (example,), opset, ["images"], ["output0"], axes).SerializeToString()


def yolo_like(opset: int = 17, seed: int = 0, dynamic: bool = True, exporter: str = "torchscript") -> onnx.ModelProto:
    """A YOLOv8-style detector: Conv-BN-SiLU, C2f (Split/Concat), SPPF (MaxPool), nearest Resize.

    Input `images` ("batch", 3, "height", "width") in [0, 1], sides a multiple of 16; output
    `output0` ("batch", 4 + YOLO_CLASSES, "anchors"): rows 0-3 decoded box centre and size in
    pixels, rows 4: sigmoid class scores — the layout whose scores a whole-tensor cosine barely sees.
    """
    return onnx.load_from_string(_yolo_bytes(opset, seed, dynamic, exporter))


# --- an LSTM recognizer ----------------------------------------------------------------------

def _crnn_module(seed: int, classes: int):
    torch = _seeded(seed)
    nn = torch.nn

    class CRNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(8, 16, 3, 1, 1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d((4, 1)),
            )
            self.rnn = nn.LSTM(16 * 2, 24, bidirectional=True)
            self.classify = nn.Linear(48, classes)

        def forward(self, image):
            x = self.features(image)                        # (B, 16, 2, W/2)
            batch, channels, height, width = x.shape
            x = x.reshape(batch, channels * height, width).permute(2, 0, 1)  # (T, B, 32)
            x, _ = self.rnn(x)
            return self.classify(x).log_softmax(-1)         # (T, B, classes)

    from torch_models import _randomize_batchnorm

    module = CRNN().eval()
    _randomize_batchnorm(module)
    return module


def crnn_feeds(batch: int = 1, width: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"image": rng.random((batch, 1, 16, width), dtype=np.float32)}


@functools.lru_cache(maxsize=None)
def _crnn_bytes(opset: int, seed: int) -> bytes:
    torch = _torch()
    example = torch.from_numpy(crnn_feeds()["image"])
    axes = {"image": {0: "batch", 3: "width"}, "log_probs": {0: "steps", 1: "batch"}}
    return _export_dynamic(_crnn_module(seed, 11), (example,), opset, ["image"], ["log_probs"], axes).SerializeToString()


def crnn_lstm(opset: int = 12, seed: int = 0) -> onnx.ModelProto:
    """A CRNN text recognizer with a bidirectional `LSTM` op: input `image` ("batch", 1, 16, "width"),
    output `log_probs` ("steps", "batch", 11)."""
    return onnx.load_from_string(_crnn_bytes(opset, seed))


# --- control flow with weights --------------------------------------------------------------

def if_with_weights(width: int = 64, seed: int = 0, opset: int = 17) -> onnx.ModelProto:
    """An If whose two branches each hold their own weight matrix (as initializers of the bodies),
    and share an outer one that only the bodies read: input `x` ("batch", width) float32, `flag` () bool; output `y`.

    Exporters of `torch.cond` and of scripted control flow put weights inside the bodies;
    a pass that copies a body's weights out (or into both branches) grows the model.
    """
    rng = np.random.default_rng(seed)
    def weight(name):
        return onnx.numpy_helper.from_array(rng.standard_normal((width, width)).astype(np.float32) * 0.1, name)
    def branch(name, act):
        nodes = [helper.make_node("MatMul", ["h", f"{name}_w"], [f"{name}_mm"]),
                 helper.make_node("MatMul", [f"{name}_mm", "shared_w"], [f"{name}_shared"]),
                 helper.make_node(act, [f"{name}_shared"], [f"{name}_out"])]
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"{name}_out", onnx.TensorProto.FLOAT, None)],
                                 initializer=[weight(f"{name}_w")])
    nodes = [
        helper.make_node("MatMul", ["x", "outer_w"], ["h"]),
        helper.make_node("If", ["flag"], ["branch_out"], then_branch=branch("then", "Relu"), else_branch=branch("else", "Tanh")),
        helper.make_node("Identity", ["branch_out"], ["branch_copy"]),  # as exporters leave them: cleanup has work
        helper.make_node("Add", ["branch_copy", "x"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "if_with_weights",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", width]),
         helper.make_tensor_value_info("flag", onnx.TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", width])],
        initializer=[weight("outer_w"), weight("shared_w")],  # shared_w: read by both bodies only
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def if_feeds(batch: int = 2, width: int = 64, flag: bool = True, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((batch, width)).astype(np.float32), "flag": np.array(flag)}


@functools.lru_cache(maxsize=None)
def _cond_bytes(seed: int) -> bytes:
    torch = _seeded(seed)
    nn = torch.nn

    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Linear(16, 32)
            self.wide, self.narrow = nn.Linear(32, 32), nn.Linear(32, 32)
            self.head = nn.Linear(32, 4)

        def forward(self, x):
            h = torch.relu(self.stem(x))
            h = torch.cond(h.sum() > 0, lambda t: torch.tanh(self.wide(t)), lambda t: torch.relu(self.narrow(t)), (h,))
            return self.head(h)

    example = torch.randn(2, 16)
    return _export(Gated().eval(), (example,), "dynamo", 18, ["x"], ["y"]).SerializeToString()


def cond_model(seed: int = 0) -> onnx.ModelProto:
    """`torch.cond` exported by the dynamo exporter (an If node, branch weights read from the
    outer scope or local functions): input `x` (2, 16) float32, output `y` (2, 4)."""
    return onnx.load_from_string(_cond_bytes(seed))


# --- odd exporters ---------------------------------------------------------------------------

def with_wrong_output_shape(model: onnx.ModelProto, dims: list[int | str]) -> onnx.ModelProto:
    """`model` (copied) declaring its first output with `dims`, which it does not produce
    (an exporter bug seen in the wild: declared [1, seqlen], real [32, 1, 8210])."""
    wrong = onnx.ModelProto()
    wrong.CopyFrom(model)
    shape = wrong.graph.output[0].type.tensor_type.shape
    del shape.dim[:]
    for dim in dims:
        entry = shape.dim.add()
        if isinstance(dim, int):
            entry.dim_value = dim
        else:
            entry.dim_param = dim
    return wrong


def set_input_dims(model: onnx.ModelProto, name: str, dims: list[int | str | None]) -> onnx.ModelProto:
    """`model` (copied) with input `name` declared as `dims` (None: a dimension of unknown size)."""
    changed = onnx.ModelProto()
    changed.CopyFrom(model)
    value = next(v for v in changed.graph.input if v.name == name)
    shape = value.type.tensor_type.shape
    del shape.dim[:]
    for dim in dims:
        entry = shape.dim.add()
        if isinstance(dim, int):
            entry.dim_value = dim
        elif isinstance(dim, str):
            entry.dim_param = dim
    return changed


def prequantized_dynamic(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` through onnxruntime's `quantize_dynamic`: DynamicQuantizeLinear with
    MatMulInteger / ConvInteger (and com.microsoft ops where ORT picks them)."""
    import tempfile
    from pathlib import Path

    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "in.onnx", Path(folder) / "out.onnx"
        onnx.save(model, source)
        quantize_dynamic(source, target, weight_type=QuantType.QUInt8, op_types_to_quantize=["MatMul", "Conv", "Gemm"])
        return onnx.load(target)


def prequantized_qdq(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> onnx.ModelProto:
    """`model` through onnxruntime's `quantize_static` (QDQ format), calibrated on `feeds` (N, …)."""
    import tempfile
    from pathlib import Path

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            count = next(iter(feeds.values())).shape[0]
            self._samples = iter([{name: array[i:i + 1] for name, array in feeds.items()} for i in range(count)])

        def get_next(self):
            return next(self._samples, None)

    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "in.onnx", Path(folder) / "out.onnx"
        onnx.save(model, source)
        quantize_static(source, target, Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
        return onnx.load(target)


# --- a trained-looking encoder ----------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _outlier_encoder_bytes(seed: int, layers: int, width: int, seq: int, opset: int) -> bytes:
    torch = _torch()
    module = _transformer_module(seed, vocab=100, width=width, heads=4, layers=layers, gelu="none")
    rng = np.random.default_rng(seed + 1)
    outliers = rng.choice(width, size=max(2, width // 32), replace=False)
    with torch.no_grad():
        for name, layer in module.named_modules():
            if isinstance(layer, torch.nn.LayerNorm):
                # Trained transformers carry a few outlier feature channels (×10-×30) after
                # LayerNorm; random-init ones do not, and that is where static int8 collapses.
                layer.weight[torch.from_numpy(outliers)] *= torch.from_numpy(rng.uniform(10, 30, outliers.size).astype(np.float32))
    feeds = transformer_feeds(1, seq, 100)
    args = (torch.from_numpy(feeds["ids"]), torch.from_numpy(feeds["mask"]))
    axes = {"ids": {0: "batch", 1: "sequence"}, "mask": {0: "batch", 1: "sequence"}, "hidden": {0: "batch", 1: "sequence"}}
    return _export_dynamic(module, args, opset, ["ids", "mask"], ["hidden"], axes).SerializeToString()


def encoder_with_outliers(seed: int = 0, layers: int = 2, width: int = 64, seq: int = 32, opset: int = 17) -> onnx.ModelProto:
    """A BERT-style encoder whose LayerNorm γ has a few outlier channels scaled ×10-×30.

    Inputs `ids`, `mask` ("batch", "sequence") int64 (ids below 100); output `hidden`
    (…, width). Feeds: `torch_models.transformer_feeds(batch, seq, 100)`.
    """
    return onnx.load_from_string(_outlier_encoder_bytes(seed, layers, width, seq, opset))


def confident_classifier(width: int = 512, classes: int = 10, logit_scale: float = 5.0, seed: int = 0,
                         calibration: int = 32, fresh: int = 64) -> tuple[onnx.ModelProto, dict, np.ndarray]:
    """(model, calibration `{x: (calibration, 1, width)}`, `fresh` new rows `(fresh, width)` of the same distribution).

    x (batch, width) → MatMul → Relu → MatMul → Softmax with large logits: the softmax is
    saturated, so a lossy pass that moves the logits a lot barely moves the probabilities on
    its samples, and flips classes on new ones. Inputs lie near a 12-dimensional subspace, so a
    data-aware fit finds a low rank that holds there."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((width, width)) / 8).astype(np.float32)
    w2 = (rng.standard_normal((width, classes)) * logit_scale / 8).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["logits"]), helper.make_node("Softmax", ["logits"], ["p"], axis=-1)],
        "confident", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("p", onnx.TensorProto.FLOAT, ["batch", classes])],
        [onnx.numpy_helper.from_array(w1, "w1"), onnx.numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    data = np.random.default_rng(seed + 1)
    basis = data.standard_normal((12, width)).astype(np.float32)
    near = lambda count: (data.standard_normal((count, 12)) @ basis + 0.05 * data.standard_normal((count, width))).astype(np.float32)  # noqa: E731
    return model, {"x": near(calibration)[:, None, :]}, near(fresh)
