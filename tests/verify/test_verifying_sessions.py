"""graphopt/verify/runner.py: verifying sessions do not spin; sessions that time keep ORT's behaviour."""

import numpy as np
import onnx.parser

from graphopt.verify.runner import make_session, run_samples

_MODEL = onnx.parser.parse_model('<ir_version: 8, opset_import: ["" : 17]>\ng (float[2, 3] x) => (float[2, 3] y) { y = Relu(x) }')


def _spinning(session) -> str | None:
    try:
        return session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
    except RuntimeError:  # never set: ORT's default (spinning)
        return None


def test_a_verifying_session_at_the_default_thread_count_does_not_spin_and_computes_the_same():
    session = make_session(_MODEL)
    # ORT's idle pool threads would otherwise spin between ops, which the process's CPU time counts.
    assert _spinning(session) == "0"
    x = np.array([[-1.0, 0.0, 2.0], [3.0, -4.0, 5.0]], dtype=np.float32)
    assert np.array_equal(run_samples(session, [{"x": x}])[0]["y"], np.maximum(x, 0))


def test_a_session_with_its_threads_set_keeps_ort_default_spinning():
    session = make_session(_MODEL, optimize=True, threads=1)
    assert _spinning(session) is None
