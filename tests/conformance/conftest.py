"""Conformance tests: graphopt's `cleanup` over the ONNX backend test cases, checked in onnxruntime.

The helpers live in `conformance_support.py` (shared with `tally.py`); this file only keeps
onnxruntime and graphsurgeon quiet for the session.
"""

import onnxruntime


def pytest_configure(config):
    onnxruntime.set_default_logger_severity(3)
