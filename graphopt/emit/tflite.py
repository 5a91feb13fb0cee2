"""`--emit tflite`: a LiteRT flatbuffer written by onnx2tf's direct writer, run in LiteRT's interpreter.

onnx2tf (`tflite_backend="flatbuffer_direct"`) writes the flatbuffer itself, without TensorFlow.
It lays images out as TFLite does, channels last: a rank-3/4/5 input `(N, C, ...)` becomes
`(N, ..., C)`, and so may an output. `run_tflite` feeds and reads the flatbuffer in the ONNX
layout, transposing where the shapes say the layout changed, and reports which tensors it
transposed. onnx2tf rewrites the ONNX file it reads (op names), so it is always handed a copy.

Precisions: `fp32`; `fp16` (float16 weights behind DEQUANTIZE ops, float32 compute and
interface: TFLite's float16 quantization, `tflite_fp16`); `int8`, integer
kernels throughout (int8 weights per channel and activations, float32 inputs and outputs,
onnx2tf's `_integer_quant` flatbuffer), calibrated on the given samples; HardSigmoid is handed
to it as RELU6 arithmetic, and GlobalAveragePool as a FULLY_CONNECTED mean, which it quantizes
well (`tflite_int8_forms`); the ops that cannot rescale get equal input and output quantization
afterwards (`tflite_int8_qparams`), and BATCH_MATMUL's constant operands are requantized per
tensor, the one form LiteRT's kernel reads (`tflite_int8_matmul`). onnx2tf's int8
writer is strict: an op it cannot quantize (a MatMul of two activations, a comparison) fails the
conversion, and so the emit, with the reason it gave.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

from graphopt.emit.tflite_fp16 import with_float16_weights
from graphopt.emit.tflite_int8_calibration import calibration_files, graphopt_calibration
from graphopt.emit.tflite_int8_forms import int8_friendly
from graphopt.emit.tflite_int8_matmul import per_tensor_matmul_constants
from graphopt.emit.tflite_int8_qparams import reconcile_passthrough_qparams
from graphopt.errors import InputError, UsageError

__all__ = ["require_tflite", "convert_to_tflite", "run_tflite", "restore_layout", "prepare_interpreter", "TfliteModel", "PRECISIONS"]

PRECISIONS = ("fp32", "fp16", "int8", "int8-mixed")
# fp16 starts from the float32 flatbuffer: its weights are halved behind DEQUANTIZE (tflite_fp16)
_FILES = {"fp32": "_float32.tflite", "fp16": "_float32.tflite", "int8": "_integer_quant.tflite"}


# onnx2tf sets the interpreter's recursion limit to this when imported, for its own graph walks.
# graphopt gives it that limit while it converts and gives the caller's back afterwards: left
# raised, a deep recursion anywhere else in the process overflows the C stack (a crash, not a
# RecursionError) or, where code sizes work by the limit, runs out of memory.
_ONNX2TF_RECURSION_LIMIT = 2**31 - 1


@contextlib.contextmanager
def _recursion_limit(during: int | None = None):
    """The caller's recursion limit restored on exit; `during` set while the block runs."""
    caller = sys.getrecursionlimit()
    if during is not None:
        sys.setrecursionlimit(max(caller, during))
    try:
        yield
    finally:
        sys.setrecursionlimit(caller)


def require_tflite(what: str) -> None:
    """Raises UsageError naming the install when onnx2tf or ai-edge-litert is missing."""
    try:
        with _recursion_limit():  # importing onnx2tf raises it for good
            import ai_edge_litert.interpreter  # noqa: F401
            import onnx2tf  # noqa: F401
    except ImportError as error:
        raise UsageError(f"{what} needs the tflite extra ({error.name} is missing): pip install 'graphopt[tflite]', "
                         "then the onnx2tf step in docs/targets.md") from error


@dataclasses.dataclass
class TfliteModel:
    flatbuffer: bytes
    precision: str
    rewritten: dict[str, int] = dataclasses.field(default_factory=dict)  # ops rewritten for onnx2tf's int8 writer
    mixed: dict | None = None  # int8-mixed: the pieces kept float32 and why (tflite_mixed)


def convert_to_tflite(model: onnx.ModelProto, precision: str = "fp32", calibration: dict[str, np.ndarray] | None = None) -> TfliteModel:
    """The flatbuffer of `model` at `precision`; `calibration` (`{input: (N, *shape)}`) for int8.

    Raises InputError naming the op onnx2tf could not convert.
    """
    require_tflite("--emit tflite")
    with _recursion_limit():
        import onnx2tf

    if precision not in PRECISIONS:
        raise UsageError(f"tflite precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "int8-mixed":
        if not calibration:
            raise UsageError("--emit tflite with int8-mixed needs calibration data (--calibration)")
        from graphopt.emit.tflite_mixed import convert_mixed
        data, chosen = convert_mixed(model, calibration, convert_to_tflite)
        return TfliteModel(data, precision, mixed=chosen)
    rewritten: dict[str, int] = {}
    if precision == "int8":
        model, rewritten = int8_friendly(model)  # forms its strict integer writer quantizes (tflite_int8_forms)
    with tempfile.TemporaryDirectory(prefix="graphopt-tflite-") as folder:
        source = Path(folder) / "model.onnx"
        onnx.save_model(model, str(source))  # a copy: onnx2tf renames ops in the file it reads
        settings = dict(input_onnx_file_path=str(source), output_folder_path=str(Path(folder) / "out"),
                        tflite_backend="flatbuffer_direct", non_verbose=True, not_use_onnxsim=True)
        if precision == "int8":
            if not calibration:
                raise UsageError("--emit tflite with int8 needs calibration data (--calibration)")
            settings.update(output_integer_quantized_tflite=True, input_quant_dtype="int8", output_quant_dtype="int8",
                            custom_input_op_name_np_data_path=calibration_files(model, calibration, Path(folder)))
        captured = io.StringIO()
        written = Path(folder) / "out" / f"model{_FILES[precision]}"
        try:
            with (contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured), _rank1_bias_axis() as per_channel,
                  graphopt_calibration(), _recursion_limit(_ONNX2TF_RECURSION_LIMIT)):
                onnx2tf.convert(**settings, **({"quant_type": "per-channel" if per_channel else "per-tensor"} if precision == "int8" else {}))
        except BaseException as error:  # onnx2tf exits (SystemExit) on some unsupported models
            if isinstance(error, KeyboardInterrupt):
                raise
            # 2.6.9 writes the int8 flatbuffer (float32 in and out), then fails validating a variant
            # with int16 activations it goes on to build; the int8 one is verified here in any case.
            if not (precision == "int8" and written.is_file()):
                raise InputError(f"onnx2tf cannot convert the model to a LiteRT flatbuffer ({precision}): "
                                 f"{_reason(error, captured.getvalue())}") from error
        if not written.is_file():
            raise InputError(f"onnx2tf wrote no {precision} flatbuffer: {_reason(None, captured.getvalue())}")
        data = written.read_bytes()
        if precision == "int8":
            data, reconciled = reconcile_passthrough_qparams(data)  # tflite_int8_qparams
            if reconciled:
                rewritten["passthrough_quantization_aligned"] = reconciled
            data, requantized = per_tensor_matmul_constants(data)  # tflite_int8_matmul
            if requantized:
                rewritten["batch_matmul_constants_per_tensor"] = requantized
        return TfliteModel(with_float16_weights(data) if precision == "fp16" else data, precision, rewritten)


@contextlib.contextmanager
def _rank1_bias_axis():
    """Per-channel int8 weights from onnx2tf 2.6.9, its one fault mended: it gives a per-channel
    bias the weight's `quantized_dimension` (3 for a depthwise weight), and LiteRT refuses a
    rank-1 tensor quantized along axis 3. The bias quantizer (`_quantize_bias_tensor`, private)
    is wrapped while the conversion runs to set it to 0; yields whether it could be (another onnx2tf
    version without it: per-tensor weights, as before)."""
    try:
        from onnx2tf.tflite_builder import quantization
    except ImportError:
        yield False
        return
    original = getattr(quantization, "_quantize_bias_tensor", None)
    if original is None:
        yield False
        return

    def rank1_axis(**kwargs):
        original(**kwargs)
        params = getattr(kwargs.get("tensor"), "quantization", None)
        if params is not None and len(getattr(params, "scale", ())) > 1:
            params.quantized_dimension = 0
    quantization._quantize_bias_tensor = rank1_axis
    try:
        yield True
    finally:
        quantization._quantize_bias_tensor = original


def _reason(error: BaseException | None, log: str) -> str:
    """The most specific reason onnx2tf gave: its innermost chained exception, else a line of its log."""
    chain = []
    while error is not None and len(chain) < 10:
        chain.append(f"{type(error).__name__}: {error}")
        error = error.__cause__ or error.__context__
    if len(chain) > 1:
        return " ".join(chain[-1].split())[:300]
    text = f"{log}\n{chain[0]}" if chain else log
    for pattern in (r"Unsupported op[^\n]*", r"[A-Za-z]*QuantizationError: [^\n]*", r"Cannot set tensor[^\n]*",
                    r"[A-Za-z]*Error: [^\n]*", r"not supported[^\n]*"):
        found = re.findall(pattern, text)
        if found:
            return found[-1].strip()[:300]
    return (chain[0] if chain else "no reason given")[:300]


def run_tflite(flatbuffer: bytes, samples: list[dict[str, np.ndarray]], model: onnx.ModelProto,
               threads: int = 1) -> tuple[list[dict[str, np.ndarray]], dict[str, str]]:
    """Per sample, `{onnx output name: array}` in the ONNX layout; and the layout changes handled.

    Inputs and outputs are matched by name where onnx2tf kept it, else by position; an array
    whose shape is the channels-last form of the ONNX shape is transposed in or out.
    """
    from ai_edge_litert.interpreter import Interpreter

    try:
        return _run(Interpreter(model_content=flatbuffer, num_threads=threads), samples, model)
    except (RuntimeError, ValueError) as error:  # LiteRT names the kernel it lacks: "Type FLOAT16 not ... (MAX_POOL_2D)"
        raise InputError(f"LiteRT cannot run the flatbuffer: {' '.join(str(error).split())[:300]}") from error


def prepare_interpreter(interpreter, model: onnx.ModelProto, sample: dict[str, np.ndarray]) -> dict[str, str]:
    """Allocates `interpreter` and sets one ONNX-layout sample as its inputs; the layout change per input."""
    interpreter.allocate_tensors()
    onnx_inputs = [v.name for v in model.graph.input if v.name in sample]
    layouts = {}
    for name, detail in _matched(onnx_inputs, interpreter.get_input_details()).items():
        value, layouts[name] = _to_shape(np.asarray(sample[name]), tuple(detail["shape"]))
        interpreter.set_tensor(detail["index"], value.astype(detail["dtype"]))
    return layouts


def _run(interpreter, samples, model):
    onnx_outputs = [v.name for v in model.graph.output]
    layouts: dict[str, str] = {}
    results = []
    output_detail = None
    for sample in samples:
        layouts.update(prepare_interpreter(interpreter, model, sample))
        output_detail = output_detail or _matched(onnx_outputs, interpreter.get_output_details())
        interpreter.invoke()
        got = {}
        for name, detail in output_detail.items():
            value = interpreter.get_tensor(detail["index"])
            got[name] = value
        results.append(got)
    return results, layouts


def restore_layout(outputs: list[dict[str, np.ndarray]], expected: list[dict[str, np.ndarray]]) -> tuple[list[dict], dict[str, str]]:
    """The tflite outputs in the shapes of the ONNX ones (channels-last transposed back), as float32 where they are float."""
    layouts, restored = {}, []
    for got, want in zip(outputs, expected):
        sample = {}
        for name, value in got.items():
            target = np.asarray(want[name])
            fixed, how = _to_shape(value, target.shape, back=True)
            layouts[name] = how
            sample[name] = fixed.astype(target.dtype) if target.dtype.kind == "f" else fixed
        restored.append(sample)
    return restored, layouts


def _matched(names: list[str], details: list[dict]) -> dict[str, dict]:
    by_name = {detail["name"]: detail for detail in details}
    if all(name in by_name for name in names):
        return {name: by_name[name] for name in names}
    if len(details) != len(names):
        raise InputError(f"the flatbuffer has {len(details)} tensors where the model has {len(names)} ({', '.join(names)})")
    return dict(zip(names, details))


def _to_shape(value: np.ndarray, shape: tuple, back: bool = False) -> tuple[np.ndarray, str]:
    """`value` in `shape`: as it is, channels moved last (NCHW→NHWC) or, `back`, first again."""
    if tuple(value.shape) == tuple(shape):
        return value, "same"
    if value.ndim >= 3:
        moved = np.moveaxis(value, -1, 1) if back else np.moveaxis(value, 1, -1)
        if tuple(moved.shape) == tuple(shape):
            return np.ascontiguousarray(moved), "NHWC→NCHW" if back else "NCHW→NHWC"
    if value.size == int(np.prod(shape)):
        return value.reshape(shape), "reshaped"
    raise InputError(f"a tensor of shape {list(value.shape)} cannot be laid out as {list(shape)}")
