"""The ordered list of fusion rules `fuse` runs; a rule is added here and nowhere else.

Order matters within a round: simplifications that expose patterns come first (transpose and
reshape chains, no-ops), then the larger patterns (activations, normalisation, attention), and
last the folds into weights (BN, per-channel constants, Pad, Gemm): a fold that ran first
would take a LayerNorm's gamma or a GELU's 0.5 into the next MatMul and break the pattern
that saves more. The pass repeats rounds to a fix point.
"""

from __future__ import annotations

from graphopt_plugins.fuse.attention import fuse_attention
from graphopt_plugins.fuse.bn_fold import fold_batchnorm_into_linear
from graphopt_plugins.fuse.bn_to_mul_add import batchnorm_to_mul_add
from graphopt_plugins.fuse.flattened_softmax import fuse_flattened_softmax
from graphopt_plugins.fuse.flattened_transpose import fuse_flattened_transpose
from graphopt_plugins.fuse.gelu import fuse_gelu
from graphopt_plugins.fuse.gemm_from_matmul_add import gemm_from_matmul_add
from graphopt_plugins.fuse.hardswish import fuse_hardswish
from graphopt_plugins.fuse.layer_norm import fuse_layer_norm
from graphopt_plugins.fuse.noop_removal import remove_noop_nodes
from graphopt_plugins.fuse.pad_fold import fold_pad_into_window
from graphopt_plugins.fuse.reshape_chain import collapse_reshape_chains
from graphopt_plugins.fuse.reshape_own_dims import constant_reshape_targets
from graphopt_plugins.fuse.residual_sum import keep_residual_norm_unfused
from graphopt_plugins.fuse.rms_norm import fuse_rms_norm
from graphopt_plugins.fuse.rule import Rule
from graphopt_plugins.fuse.scale_after import fold_channel_constants_after
from graphopt_plugins.fuse.scale_before import fold_channel_constants_before
from graphopt_plugins.fuse.scale_upstream import fold_scalars_upstream
from graphopt_plugins.fuse.skip_layer_norm import fuse_skip_layer_norm
from graphopt_plugins.fuse.squeeze_chain import merge_squeeze_chains
from graphopt_plugins.fuse.squeeze_pair import remove_squeeze_pairs
from graphopt_plugins.fuse.transpose_chain import merge_transpose_chains
from graphopt_plugins.fuse.transpose_into_gemm import fold_transpose_into_gemm
from graphopt_plugins.fuse.value_bias import fold_value_bias

__all__ = ["RULES", "rule_names"]

RULES: tuple[Rule, ...] = (
    # -- simplifications that expose patterns --
    Rule("transpose_chain", merge_transpose_chains, description="Transpose∘Transpose merged, or removed when it is the identity"),
    Rule("reshape_own_dims", constant_reshape_targets, min_opset=5, description="a Reshape target built from the input's own Shape becomes a constant"),
    Rule("reshape_chain", collapse_reshape_chains, min_opset=5, description="Reshape∘Reshape (or Flatten) collapsed into one Reshape"),
    Rule("squeeze_pair", remove_squeeze_pairs, description="Squeeze/Unsqueeze pairs on the same axes removed"),
    Rule("squeeze_chain", merge_squeeze_chains, description="Unsqueeze∘Unsqueeze and Squeeze∘Squeeze merged into one"),
    Rule("noop_removal", remove_noop_nodes, description="Reshape/Cast/Slice/Expand/Concat/Split that return their input, removed"),
    # -- pattern rules (activations, norms, attention) --
    Rule("hardswish", fuse_hardswish, min_opset=6, description="x*relu6(x+3)/6 and x*HardSigmoid(x) → HardSwish (opset ≥ 14); below 14, x*relu6(x+3)/6 → x*HardSigmoid(x)"),
    Rule("layer_norm", fuse_layer_norm, description="ReduceMean/Sub/Pow/Sqrt/Div[/Mul/Add] → LayerNormalization (opset ≥ 17; below, left for onnxruntime and warned of)"),
    Rule("rms_norm", fuse_rms_norm, min_opset=23, description="x/sqrt(mean(x²)+eps)*γ → RMSNormalization (opset ≥ 23)"),
    Rule("residual_sum", keep_residual_norm_unfused, min_opset=17, description="a residual Add before a LayerNormalization → Sum, which onnxruntime does not fuse into its slower SkipLayerNormalization"),
    Rule("skip_layer_norm", fuse_skip_layer_norm, needs_contrib_ops=True, description="residual Add + LayerNormalization → contrib SkipLayerNormalization (onnxruntime; only with fuse.skip=residual_sum)"),
    Rule("gelu", fuse_gelu, description="GELU in erf or tanh form → Gelu (opset ≥ 20) or contrib Gelu/FastGelu (onnxruntime)"),
    Rule("flattened_softmax", fuse_flattened_softmax, description="Flatten→Softmax→Reshape(Shape(x)) → Softmax over x's last axis"),
    Rule("flattened_transpose", fuse_flattened_transpose, description="Reshape(merge leading axes)→Transpose→Reshape(split back) → one Transpose"),
    Rule("attention", fuse_attention, needs_contrib_ops=True, description="scaled dot-product attention with head split/merge → contrib MultiHeadAttention (onnxruntime)"),
    # -- folds into weights and Gemm --
    Rule("bn_fold", fold_batchnorm_into_linear, description="BatchNormalization folded into the Conv/ConvTranspose/Gemm/MatMul before it"),
    Rule("scale_after", fold_channel_constants_after, description="per-channel Mul/Add/Sub/Div by constants folded into the linear node before"),
    Rule("scale_upstream", fold_scalars_upstream, description="a scalar Mul/Div after MatMul(q, kᵀ) folded, through Reshape/Transpose and bias Adds, into the projection's weights (standard target)"),
    Rule("value_bias", fold_value_bias, description="attention's value bias moved past softmax(…)·V into the output projection's bias (standard target)"),
    Rule("bn_to_mul_add", batchnorm_to_mul_add, description="a BN before a linear node becomes Add+Mul that fold into it"),
    Rule("scale_before", fold_channel_constants_before, description="per-channel Mul/Div (Add/Sub where exact) folded into the linear node after"),
    Rule("pad_fold", fold_pad_into_window, description="constant spatial Pad folded into Conv/AveragePool/MaxPool pads"),
    Rule("gemm_from_matmul_add", gemm_from_matmul_add, min_opset=7, description="MatMul+Add(bias) on 2-D operands becomes Gemm"),
    Rule("transpose_into_gemm", fold_transpose_into_gemm, description="a 2-D Transpose folded into Gemm's transA/transB"),
)


def rule_names() -> list[str]:
    return [rule.name for rule in RULES]
