"""graphopt_plugins/fuse/bn_to_mul_add.py: a BN no linear node absorbs becomes Add+Mul that fold into the next one."""

from fuse_support import fuse_and_check, model_from_text, op_counts
from weights_support import rand, weights

BN = weights(w=rand(4, 4, 3, 3), gamma=rand(4, low=0.5, high=1.5), beta=rand(4, seed=2), mean=rand(4, seed=3),
             var=rand(4, low=0.5, high=2.0, seed=4))


def test_bn_before_an_unpadded_conv_disappears():
    model = model_from_text(f"""
        g (float[1,4,6,6] x) => (float[1,4,4,4] y) {BN} {{
            r = Relu(x)
            b = BatchNormalization(r, gamma, beta, mean, var)
            y = Conv(b, w)
        }}""")
    fused, stats = fuse_and_check(model)
    assert stats["bn_to_mul_add"] == 1
    assert stats["scale_before"] == 2
    assert op_counts(fused) == {"Relu": 1, "Conv": 1}


def test_bn_before_a_padded_conv_leaves_only_the_add():
    model = model_from_text(f"""
        g (float[1,4,6,6] x) => (float[1,4,6,6] y) {BN} {{
            r = Relu(x)
            b = BatchNormalization(r, gamma, beta, mean, var)
            y = Conv<pads=[1,1,1,1]>(b, w)
        }}""")
    fused, stats = fuse_and_check(model)
    assert stats["bn_to_mul_add"] == 1
    assert stats["scale_before"] == 1  # the Mul; the Add before a padded Conv is not exact
    assert op_counts(fused) == {"Relu": 1, "Add": 1, "Conv": 1}


def test_bn_feeding_an_activation_stays():
    model = model_from_text(f"""
        g (float[1,4,6,6] x) => (float[1,4,6,6] y) {BN} {{
            r = Relu(x)
            b = BatchNormalization(r, gamma, beta, mean, var)
            y = Relu(b)
        }}""")
    fused, stats = fuse_and_check(model)
    assert stats.get("bn_to_mul_add", 0) == 0
    assert op_counts(fused) == {"Relu": 2, "BatchNormalization": 1}
