"""Writing the optimized model for a runtime: ONNX Runtime's ORT format, LiteRT's flatbuffer.

Each emitter converts the optimized ONNX model, runs the result in its own runtime on the
verification inputs, compares it with onnxruntime's outputs of the optimized ONNX, and only
then is anything written (atomically, beside the output). An op the target lacks is a
`graphopt.InputError` naming the op (exit 2), with nothing written.
"""
