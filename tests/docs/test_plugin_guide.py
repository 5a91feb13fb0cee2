"""docs/plugins.md carries every hookspec's signature and docstring, as graphopt/hookspecs.py has them."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

from graphopt import hookspecs

DOC = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"
START, END = "<!-- hooks:start -->", "<!-- hooks:end -->"


def hook_reference() -> str:
    parts = []
    for name, function in inspect.getmembers(hookspecs, inspect.isfunction):
        if name.startswith("graphopt_"):
            parts.append(f"### `{name}{inspect.signature(function)}`\n\n{inspect.cleandoc(function.__doc__)}\n")
    return "\n".join(parts)


def rendered() -> str:
    text = DOC.read_text()
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{hook_reference()}{END}{tail}"


def test_the_hook_reference_is_current():
    assert DOC.read_text() == rendered(), "regenerate it: python tests/docs/test_plugin_guide.py"


if __name__ == "__main__":
    DOC.write_text(rendered())


def test_the_smallest_plugin_in_the_guide_works(monkeypatch):
    import types

    import numpy as np
    import onnx.parser
    import onnxruntime as ort

    import graphopt

    source = DOC.read_text().split("```python\n# graphopt_my_pass/__init__.py\n", 1)[1].split("```", 1)[0]
    plugin = types.ModuleType("graphopt_my_pass")
    monkeypatch.setitem(sys.modules, plugin.__name__, plugin)  # dataclasses look their module up
    exec(compile(source, "docs/plugins.md", "exec"), plugin.__dict__)
    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[3] x) => (float[3] y, float[3] z) {
            a = Neg(x)
            b = Neg(a)
            y = Relu(b)
            c = Neg(y)
            z = Neg(c)
        }""")
    result = graphopt.optimize(model, passes=["fold-double-neg"], plugins=[plugin])
    assert result.report["passes"][0]["details"] == {"folded": 1}  # the second pair writes a graph output
    assert [node.op_type for node in result.model.graph.node] == ["Relu", "Neg", "Neg"]
    x = np.array([-1.0, 0.5, 2.0], dtype=np.float32)
    session = ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])
    y, z = session.run(None, {"x": x})
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    np.testing.assert_array_equal(z, y)
