"""The ordered list of fusion rules `fuse` runs; a rule is added here and nowhere else.

Order matters within a round: simplifications that expose patterns come first (transpose and
reshape chains, no-ops), then folds into weights (BN, per-channel constants, Pad), then the
larger patterns (activations, normalisation, attention). The pass repeats rounds to a fix point.
"""

from __future__ import annotations

from graphopt_plugins.fuse.attention import fuse_attention
from graphopt_plugins.fuse.flattened_softmax import fuse_flattened_softmax
from graphopt_plugins.fuse.flattened_transpose import fuse_flattened_transpose
from graphopt_plugins.fuse.gelu import fuse_gelu
from graphopt_plugins.fuse.hardswish import fuse_hardswish
from graphopt_plugins.fuse.layer_norm import fuse_layer_norm
from graphopt_plugins.fuse.rms_norm import fuse_rms_norm
from graphopt_plugins.fuse.rule import Rule
from graphopt_plugins.fuse.skip_layer_norm import fuse_skip_layer_norm
from graphopt_plugins.fuse.transpose_chain import merge_transpose_chains

__all__ = ["RULES", "rule_names"]

RULES: tuple[Rule, ...] = (
    Rule("transpose_chain", merge_transpose_chains, description="Transpose∘Transpose merged, or removed when it is the identity"),
    # -- pattern rules (activations, norms, attention) --
    Rule("hardswish", fuse_hardswish, min_opset=6, description="x*relu6(x+3)/6 and x*HardSigmoid(x) → HardSwish (opset ≥ 14); below 14, x*relu6(x+3)/6 → x*HardSigmoid(x)"),
    Rule("layer_norm", fuse_layer_norm, min_opset=17, description="ReduceMean/Sub/Pow/Sqrt/Div[/Mul/Add] → LayerNormalization (opset ≥ 17)"),
    Rule("rms_norm", fuse_rms_norm, min_opset=23, description="x/sqrt(mean(x²)+eps)*γ → RMSNormalization (opset ≥ 23)"),
    Rule("skip_layer_norm", fuse_skip_layer_norm, needs_contrib_ops=True, description="residual Add + LayerNormalization → contrib SkipLayerNormalization (onnxruntime)"),
    Rule("gelu", fuse_gelu, description="GELU in erf or tanh form → Gelu (opset ≥ 20) or contrib Gelu/FastGelu (onnxruntime)"),
    Rule("flattened_softmax", fuse_flattened_softmax, description="Flatten→Softmax→Reshape(Shape(x)) → Softmax over x's last axis"),
    Rule("flattened_transpose", fuse_flattened_transpose, description="Reshape(merge leading axes)→Transpose→Reshape(split back) → one Transpose"),
    Rule("attention", fuse_attention, needs_contrib_ops=True, description="scaled dot-product attention with head split/merge → contrib MultiHeadAttention (onnxruntime)"),
)


def rule_names() -> list[str]:
    return [rule.name for rule in RULES]
