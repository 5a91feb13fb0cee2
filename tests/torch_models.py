"""Small real models exported from torch by both exporters, shared by the pass tests.

torch is a test-only dependency (the `test` extra); graphopt itself never imports it. Each
export is cached for the session, and callers get a fresh copy they may mutate. The models
are deliberately shaped like what users export: a MobileNet/ResNet-style CNN (Conv-BN-act,
depthwise, residual, pooling, classifier) and a BERT-style encoder (embedding, hand-written
multi-head attention with a padding mask, LayerNorm, GELU feed-forward).
"""

from __future__ import annotations

import functools
import io
import warnings

import numpy as np
import onnx

__all__ = ["EXPORTERS", "cnn", "transformer", "resnet_like", "cnn_feeds", "transformer_feeds"]

# "torchscript" is torch.onnx.export(dynamo=False); "dynamo" is the torch.export-based exporter.
EXPORTERS = ("torchscript", "dynamo")


def _torch():
    import torch  # imported lazily so that collecting tests never needs torch

    return torch


def _export(module, args, exporter: str, opset: int, input_names, output_names) -> onnx.ModelProto:
    torch = _torch()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            program = torch.onnx.export(
                module, args, dynamo=True, opset_version=opset, input_names=input_names,
                output_names=output_names, verbose=False,
            )
            program.save(buffer)
        elif exporter == "torchscript":
            torch.onnx.export(
                module, args, buffer, dynamo=False, opset_version=opset,
                input_names=input_names, output_names=output_names,
            )
        else:
            raise ValueError(f"unknown exporter {exporter!r}; expected one of {EXPORTERS}")
    return onnx.load_from_string(buffer.getvalue())


def _seeded(seed: int):
    torch = _torch()
    torch.manual_seed(seed)
    return torch


def _randomize_batchnorm(module) -> None:
    """Trained BN layers have non-trivial statistics; fresh ones (mean 0, var 1) hide folding bugs."""
    torch = _torch()
    for layer in module.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            with torch.no_grad():
                layer.running_mean.uniform_(-0.5, 0.5)
                layer.running_var.uniform_(0.5, 2.0)
                layer.weight.uniform_(0.5, 1.5)
                layer.bias.uniform_(-0.2, 0.2)


def _cnn_module(seed: int):
    torch = _seeded(seed)
    nn = torch.nn

    class HandHardSwish(nn.Module):
        # The decomposed form older exporters and hand-written models produce: x * relu6(x + 3) / 6.
        def forward(self, x):
            return x * torch.clamp(x + 3.0, 0.0, 6.0) / 6.0

    class Block(nn.Module):
        def __init__(self, channels: int):
            super().__init__()
            self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
            self.bn1 = nn.BatchNorm2d(channels)
            self.act = HandHardSwish()
            self.pointwise = nn.Conv2d(channels, channels, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(channels)

        def forward(self, x):
            return torch.relu(x + self.bn2(self.pointwise(self.act(self.bn1(self.depthwise(x))))))

    class SmallCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(16)
            self.block1 = Block(16)
            self.expand = nn.Conv2d(16, 32, 1)
            self.pool = nn.MaxPool2d(2)
            self.block2 = Block(32)
            self.head = nn.Linear(32, 10)

        def forward(self, x):
            x = torch.relu(self.bn(self.stem(x)))
            x = self.block1(x)
            x = self.pool(torch.nn.functional.hardswish(self.expand(x)))
            x = self.block2(x)
            x = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1)
            return self.head(x)

    module = SmallCNN().eval()
    _randomize_batchnorm(module)
    return module


def _resnet_module(seed: int):
    torch = _seeded(seed)
    nn = torch.nn

    class Basic(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            identity = x if self.down is None else self.down(x)
            out = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(out)) + identity)

    class ResNetLike(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
            self.layer1 = nn.Sequential(Basic(16, 16, 1), Basic(16, 16, 1))
            self.layer2 = nn.Sequential(Basic(16, 32, 2), Basic(32, 32, 1))
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            x = self.layer2(self.layer1(self.stem(x)))
            return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))

    module = ResNetLike().eval()
    _randomize_batchnorm(module)
    return module


def _transformer_module(seed: int, vocab: int, width: int, heads: int, layers: int, gelu: str):
    torch = _seeded(seed)
    nn = torch.nn

    class SelfAttention(nn.Module):
        # Written the way BERT-style code does it, so the exported pattern is the common one:
        # q/k/v projections, head split by view+transpose, scaled scores, additive mask, softmax.
        def __init__(self):
            super().__init__()
            self.heads, self.head_dim = heads, width // heads
            self.q, self.k, self.v = nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, width)
            self.out = nn.Linear(width, width)

        def split(self, x):
            batch, seq, _ = x.shape
            return x.view(batch, seq, self.heads, self.head_dim).transpose(1, 2)

        def forward(self, x, additive_mask):
            q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
            scores = torch.matmul(q, k.transpose(-1, -2)) / (self.head_dim ** 0.5) + additive_mask
            context = torch.matmul(torch.softmax(scores, dim=-1), v)
            batch, _, seq, _ = context.shape
            return self.out(context.transpose(1, 2).reshape(batch, seq, width))

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = SelfAttention()
            self.norm1 = nn.LayerNorm(width)
            self.ff1, self.ff2 = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)
            self.act = nn.GELU(approximate=gelu)
            self.norm2 = nn.LayerNorm(width)

        def forward(self, x, additive_mask):
            x = self.norm1(x + self.attention(x, additive_mask))
            return self.norm2(x + self.ff2(self.act(self.ff1(x))))

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocab, width)
            self.layers = nn.ModuleList(Layer() for _ in range(layers))

        def forward(self, ids, mask):
            additive_mask = (1.0 - mask[:, None, None, :].to(torch.float32)) * -10000.0
            x = self.embed(ids)
            for layer in self.layers:
                x = layer(x, additive_mask)
            return x

    return Encoder().eval()


def cnn_feeds(batch: int = 1, size: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"image": rng.standard_normal((batch, 3, size, size)).astype(np.float32)}


def transformer_feeds(batch: int = 2, seq: int = 16, vocab: int = 100, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, seq), dtype=np.int64)
    mask[0, seq - 3:] = 0  # one padded sequence, so the mask path matters
    return {"ids": rng.integers(0, vocab, (batch, seq), dtype=np.int64), "mask": mask}


@functools.lru_cache(maxsize=None)
def _cnn_bytes(exporter: str, opset: int, seed: int) -> bytes:
    torch = _torch()
    example = torch.from_numpy(cnn_feeds()["image"])
    return _export(_cnn_module(seed), (example,), exporter, opset, ["image"], ["logits"]).SerializeToString()


@functools.lru_cache(maxsize=None)
def _resnet_bytes(exporter: str, opset: int, seed: int, size: int = 32) -> bytes:
    torch = _torch()
    example = torch.from_numpy(cnn_feeds(size=size)["image"])
    return _export(_resnet_module(seed), (example,), exporter, opset, ["image"], ["logits"]).SerializeToString()


@functools.lru_cache(maxsize=None)
def _transformer_bytes(exporter: str, opset: int, seed: int, layers: int, gelu: str,
                       width: int = 32, heads: int = 4, batch: int = 2, seq: int = 16, vocab: int = 100) -> bytes:
    torch = _torch()
    feeds = transformer_feeds(batch, seq, vocab)
    module = _transformer_module(seed, vocab=vocab, width=width, heads=heads, layers=layers, gelu=gelu)
    args = (torch.from_numpy(feeds["ids"]), torch.from_numpy(feeds["mask"]))
    return _export(module, args, exporter, opset, ["ids", "mask"], ["hidden"]).SerializeToString()


def cnn(exporter: str = "torchscript", opset: int = 17, seed: int = 0) -> onnx.ModelProto:
    """A MobileNet-style CNN: input `image` (1, 3, 32, 32) float32, output `logits` (1, 10)."""
    return onnx.load_from_string(_cnn_bytes(exporter, opset, seed))


def resnet_like(exporter: str = "torchscript", opset: int = 17, seed: int = 0, *, size: int = 32) -> onnx.ModelProto:
    """A ResNet-style CNN with residual groups and a strided downsample branch; same IO as `cnn`
    (input (1, 3, size, size): the benchmarks export it larger)."""
    return onnx.load_from_string(_resnet_bytes(exporter, opset, seed, size))


def transformer(
    exporter: str = "torchscript", opset: int = 17, seed: int = 0, layers: int = 2, gelu: str = "none",
    *, width: int = 32, heads: int = 4, batch: int = 2, seq: int = 16, vocab: int = 100,
) -> onnx.ModelProto:
    """A BERT-style encoder: inputs `ids` and `mask` (batch, seq) int64, output `hidden` (batch, seq, width).

    Defaults: (2, 16) tokens from a vocabulary of 100, width 32, 4 heads. `gelu` is torch's
    `approximate` argument: "none" exports the erf form, "tanh" the tanh form. At opset < 17
    the TorchScript exporter writes LayerNorm decomposed (ReduceMean/Sub/Pow/Sqrt/Div).
    """
    return onnx.load_from_string(_transformer_bytes(exporter, opset, seed, layers, gelu, width, heads, batch, seq, vocab))
