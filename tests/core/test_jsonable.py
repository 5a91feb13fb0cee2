"""Report values become valid JSON."""

import json
import math

import numpy as np

from graphopt.jsonable import to_jsonable


def test_numpy_scalars_infinities_and_objects_become_json_values():
    value = {"a": np.float32(0.5), "b": [np.int64(3), math.inf, -np.inf, np.nan], 1: (True, None), "c": object}
    converted = to_jsonable(value)
    assert converted == {"a": 0.5, "b": [3, "inf", "-inf", "nan"], "1": [True, None], "c": str(object)}
    json.loads(json.dumps(converted, allow_nan=False))
