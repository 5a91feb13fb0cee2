"""Every latency decision graphopt makes, made on one backend: the deployment target's.

    from graphopt import latency
    timer = latency.backend("host-ort")            # or "host-litert", "none", a plugin's name
    timings = timer.compare({"float": a, "int8": b}, feeds)   # {label: {"median_ms", "ratio", "backend"}}
    if timer.measures and timings["int8"]["ratio"] > 0.95: ...

Inside a pass, `latency.of(ctx)` is the run's backend (`--latency-on` / `latency_on=`).
`graphopt.latency.energy` estimates MACs by dtype, memory and a relative energy proxy.
"""

from graphopt.latency.backends import (
    BUILTIN_BACKENDS,
    DEFAULT_BACKEND,
    LatencyBackend,
    backend,
    of,
    plugin_backends,
)

__all__ = ["LatencyBackend", "backend", "of", "plugin_backends", "BUILTIN_BACKENDS", "DEFAULT_BACKEND"]
