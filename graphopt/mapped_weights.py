"""External weights as graphsurgeon constants that stay in their file, memory-mapped.

`ir.import_graph` wraps each constant whose tensor refers to external data (a model loaded by
`model_io.load_model`, which leaves big weights on disk) in `_MappedValues`; `ir.export_model`
turns a constant still holding the array it mapped back into the same file reference.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import external_data_helper
from onnx_graphsurgeon.ir.tensor import LazyValues

__all__ = ["map_external_constants", "unmap_external_constants"]


class _MappedValues(LazyValues):
    """A constant whose values stay in the model's external data file, memory-mapped read-only.

    graphsurgeon would read an external tensor relative to the current directory; this reads
    it from the model's folder. Reading `.values` maps the bytes without copying them, and a
    constant whose values a pass did not replace is exported as the same reference again
    (`unmap_external_constants`), so untouched weights never enter the exported proto.
    """

    def __init__(self, tensor: onnx.TensorProto, folder: Path):
        reference = onnx.TensorProto()
        reference.CopyFrom(tensor)  # graphsurgeon renames the proto it exports: keep our own
        super().__init__(reference)
        self.folder = folder
        self._array = lambda: None  # a weak reference: the array points back here, no cycle

    def load(self) -> np.ndarray:
        info = external_data_helper.ExternalDataInfo(self.tensor)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(self.tensor.data_type)
        shape = tuple(self.tensor.dims)
        if math.prod(shape) == 0:
            return np.zeros(shape, dtype=dtype)
        array = np.memmap(self.folder / info.location, dtype=dtype, mode="r", offset=int(info.offset or 0), shape=shape)
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


def map_external_constants(levels: Iterable[gs.Graph], folder: Path) -> None:
    """Makes every constant of `levels` read from an external data file a `_MappedValues`."""
    for constant in _external_constants(levels):
        values = constant._values
        if type(values) is LazyValues and external_data_helper.uses_external_data(values.tensor):
            constant._values = _MappedValues(values.tensor, folder)


def unmap_external_constants(levels: Iterable[gs.Graph]) -> None:
    """Turns constants still holding the very array mapped from the data file back into references."""
    for constant in _external_constants(levels):
        source = getattr(constant._values, "_graphopt_source", None)  # views and copies do not carry it
        if source is not None and source.array is constant._values:
            constant._values = source
