"""A YOLOv8n-width detector for the quantize benchmark (the test suite's `yolo_like` is 4-8x narrower).

Same blocks as `tests/trait_models.py` `yolo_like` (Conv-BN-SiLU, C2f Split/Concat, SPPF MaxPools,
nearest Resize, a decoding head whose output concatenates boxes in pixels with sigmoid class
scores) at YOLOv8n's widths (16-256 channels, three detection levels), exported from torch with
dynamic batch and size. Random weights, BatchNorm statistics randomized like the tests do.
"""

from __future__ import annotations

import io

import numpy as np
import onnx


def yolov8n_like(classes: int = 80, seed: int = 0, size: int = 320) -> onnx.ModelProto:
    import torch

    torch.manual_seed(seed)
    nn = torch.nn

    class ConvBnSiLU(nn.Module):
        def __init__(self, cin, cout, k=1, s=1):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, k, s, k // 2, bias=False)
            self.bn = nn.BatchNorm2d(cout)

        def forward(self, x):
            return nn.functional.silu(self.bn(self.conv(x)))

    class Bottleneck(nn.Module):
        def __init__(self, c, shortcut=True):
            super().__init__()
            self.a, self.b, self.shortcut = ConvBnSiLU(c, c, 3), ConvBnSiLU(c, c, 3), shortcut

        def forward(self, x):
            y = self.b(self.a(x))
            return x + y if self.shortcut else y

    class C2f(nn.Module):
        def __init__(self, cin, cout, n=1, shortcut=True):
            super().__init__()
            self.half = cout // 2
            self.stem = ConvBnSiLU(cin, 2 * self.half)
            self.blocks = nn.ModuleList(Bottleneck(self.half, shortcut) for _ in range(n))
            self.merge = ConvBnSiLU((2 + n) * self.half, cout)

        def forward(self, x):
            parts = list(self.stem(x).split((self.half, self.half), 1))
            for block in self.blocks:
                parts.append(block(parts[-1]))
            return self.merge(torch.cat(parts, 1))

    class SPPF(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.reduce, self.merge = ConvBnSiLU(c, c // 2), ConvBnSiLU(2 * c, c)
            self.pool = nn.MaxPool2d(5, 1, 2)

        def forward(self, x):
            x = self.reduce(x)
            p1 = self.pool(x)
            p2 = self.pool(p1)
            return self.merge(torch.cat((x, p1, p2, self.pool(p2)), 1))

    class Head(nn.Module):
        def __init__(self, c, stride):
            super().__init__()
            self.stride = stride
            self.box = nn.Sequential(ConvBnSiLU(c, 64, 3), ConvBnSiLU(64, 64, 3), nn.Conv2d(64, 4, 1))
            self.cls = nn.Sequential(ConvBnSiLU(c, 80, 3), ConvBnSiLU(80, 80, 3), nn.Conv2d(80, classes, 1))
            with torch.no_grad():
                self.cls[-1].bias.fill_(-4.0)  # trained heads: most scores low

        def forward(self, x):
            batch, _, height, width = x.shape
            ys = torch.arange(height, dtype=torch.float32)
            xs = torch.arange(width, dtype=torch.float32)
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
            centres = torch.stack((grid_x, grid_y), 0).reshape(1, 2, height * width) + 0.5
            raw = self.box(x).reshape(batch, 4, height * width)
            xy = (centres + raw[:, :2].tanh()) * self.stride
            wh = torch.exp(raw[:, 2:].clamp(-4, 4)) * self.stride
            scores = torch.sigmoid(self.cls(x)).reshape(batch, -1, height * width)
            return torch.cat((xy, wh, scores), 1)

    class Detector(nn.Module):
        def __init__(self):
            super().__init__()
            self.b1 = nn.Sequential(ConvBnSiLU(3, 16, 3, 2), ConvBnSiLU(16, 32, 3, 2), C2f(32, 32))
            self.b2 = nn.Sequential(ConvBnSiLU(32, 64, 3, 2), C2f(64, 64, 2))
            self.b3 = nn.Sequential(ConvBnSiLU(64, 128, 3, 2), C2f(128, 128, 2))
            self.b4 = nn.Sequential(ConvBnSiLU(128, 256, 3, 2), C2f(256, 256), SPPF(256))
            self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
            self.n3, self.n2 = C2f(384, 128, shortcut=False), C2f(192, 64, shortcut=False)
            self.d2, self.m3 = ConvBnSiLU(64, 64, 3, 2), C2f(192, 128, shortcut=False)
            self.d3, self.m4 = ConvBnSiLU(128, 128, 3, 2), C2f(384, 256, shortcut=False)
            self.heads = nn.ModuleList((Head(64, 8.0), Head(128, 16.0), Head(256, 32.0)))

        def forward(self, image):
            p3 = self.b2(self.b1(image))
            p4 = self.b3(p3)
            p5 = self.b4(p4)
            t4 = self.n3(torch.cat((self.up(p5), p4), 1))
            t3 = self.n2(torch.cat((self.up(t4), p3), 1))
            o4 = self.m3(torch.cat((self.d2(t3), t4), 1))
            o5 = self.m4(torch.cat((self.d3(o4), p5), 1))
            return torch.cat([head(x) for head, x in zip(self.heads, (t3, o4, o5))], 2)

    module = Detector().eval()
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.BatchNorm2d):
                n = layer.num_features
                layer.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, n).astype(np.float32)))
                layer.bias.copy_(torch.from_numpy(rng.normal(0, 0.2, n).astype(np.float32)))
                layer.running_mean.copy_(torch.from_numpy(rng.normal(0, 0.2, n).astype(np.float32)))
                layer.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, n).astype(np.float32)))
    example = torch.rand(1, 3, size, size)
    buffer = io.BytesIO()
    torch.onnx.export(module, (example,), buffer, opset_version=17, input_names=["images"], output_names=["output0"],
                      dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}, "output0": {0: "batch", 2: "anchors"}},
                      dynamo=False)
    return onnx.load_from_string(buffer.getvalue())
