"""External weights as graphsurgeon constants that stay in their file, memory-mapped.

`convert.import_graph` wraps each constant whose tensor refers to external data in
`_MappedValues`; `convert.export_model` turns a constant still holding the array it mapped back
into the same file reference, and (in a run that spills) writes new large arrays to the spill file.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import external_data_helper
from onnx_graphsurgeon.ir.tensor import LazyValues

from graphopt.external_data import INLINE_EXTERNAL_BYTES, read_external, spill_array

__all__ = ["map_external_constants", "unmap_external_constants", "spill_new_constants"]


class _MappedValues(LazyValues):
    """A constant whose values stay in the model's external data file, memory-mapped read-only
    (graphsurgeon would read them relative to the current directory, and copy them); untouched,
    it is exported as the same reference again (`unmap_external_constants`).
    """

    def __init__(self, tensor: onnx.TensorProto):
        reference = onnx.TensorProto()
        reference.CopyFrom(tensor)  # graphsurgeon renames the proto it exports: keep our own
        super().__init__(reference)
        self._array = lambda: None  # a weak reference: the array points back here, no cycle

    def load(self) -> np.ndarray:
        array = read_external(self.tensor)
        if not isinstance(array, np.memmap):
            return array  # an empty tensor: nothing mapped, nothing to export as a reference
        array._graphopt_source = self
        self._array = weakref.ref(array)
        return array

    @property
    def array(self) -> np.ndarray | None:
        """The array `load` mapped, while something still holds it."""
        return self._array()


def _external_constants(levels: Iterable[gs.Graph]) -> Iterator[gs.Constant]:
    for owner in levels:
        for tensor in owner.tensors().values():
            if isinstance(tensor, gs.Constant):
                yield tensor
        for node in owner.nodes:
            value = node.attrs.get("value") if node.op == "Constant" else None
            if isinstance(value, gs.Constant):
                yield value


def map_external_constants(levels: Iterable[gs.Graph]) -> None:
    """Makes every constant of `levels` read from an external data file a `_MappedValues`."""
    for constant in _external_constants(levels):
        values = constant._values
        if type(values) is LazyValues and external_data_helper.uses_external_data(values.tensor):
            constant._values = _MappedValues(values.tensor)


def unmap_external_constants(levels: Iterable[gs.Graph]) -> None:
    """Turns constants still holding the very array mapped from the data file back into references."""
    for constant in _external_constants(levels):
        source = getattr(constant._values, "_graphopt_source", None)  # views and copies do not carry it
        if source is not None and source.array is constant._values:
            constant._values = source


def spill_new_constants(graph: gs.Graph, folder: Path) -> None:
    """Moves the large arrays passes created in `graph`'s own constants to the spill file: only the
    main graph's, since onnxruntime accepts external initializers (`make_session`) there alone."""
    for constant in graph.tensors().values():
        if not isinstance(constant, gs.Constant) or isinstance(constant._values, LazyValues):
            continue
        values = constant._values
        source = getattr(values, "_graphopt_source", None)
        if source is not None and source.array is values:
            continue  # untouched: exported as its original reference
        if values.dtype.kind in "biufc" and values.nbytes >= INLINE_EXTERNAL_BYTES:
            data_type = onnx.helper.np_dtype_to_tensor_dtype(values.dtype)
            constant._values = _MappedValues(spill_array(values, constant.name, data_type, folder))
