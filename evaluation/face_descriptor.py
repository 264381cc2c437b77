"""dlib's face-recognition ResNet (`dlib_face_recognition_resnet_model_v1.dat`) run by PyTorch.

dlib's own CPU build (the dlib-bin wheel) runs this network without BLAS: ~50 ms per face on a free core, which
made the identity metric cost ten times the rest of `m2u-eval`. The same weights in PyTorch run batched through
oneDNN at a fraction of that, and agree with dlib to float rounding (tests/evaluation/test_identity_speed.py
compares the descriptors and the identity figures with dlib's). Hand-written because neither dlib's Python API
nor any maintained library exposes the weights: they are read here from the model file's layer records
(dlib's serialisation: compact integers, named layers, float32 tensors), and the layer sequence is checked
against the published architecture (a 29-convolution ResNet, 150x150 RGB chips → 128-D) before use.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DlibFaceNet", "load_dlib_face_net", "CHIP_SIZE", "CHIP_PADDING"]

CHIP_SIZE = 150  # the chip dlib's compute_face_descriptor extracts (get_face_chip defaults)
CHIP_PADDING = 0.25
# Channel widths of the residual stages, in order (dlib's alevel4 .. alevel0), and which block opens a stage by
# halving the resolution (dlib's ares_down).
_STAGES: tuple[tuple[int, int, bool], ...] = (
    (32, 3, False),
    (64, 4, True),
    (128, 3, True),
    (256, 3, True),
    (256, 1, True),
)
_LAYER = re.compile(rb"(con_|affine_|fc_|input_rgb_image_sized)")


class _Reader:
    """dlib's compact integers (a byte holding the length and the sign, then little-endian bytes) and tensors."""

    def __init__(self, data: bytes, pos: int):
        self.data, self.pos = data, pos

    def int(self) -> int:
        head = self.data[self.pos]
        size, negative = head & 0x0F, bool(head & 0x80)
        value = int.from_bytes(self.data[self.pos + 1 : self.pos + 1 + size], "little")
        self.pos += 1 + size
        return -value if negative else value

    def float(self) -> float:
        mantissa, exponent = self.int(), self.int()
        return float(np.ldexp(float(mantissa), exponent))

    def tensor(self) -> np.ndarray:
        version = self.int()
        if version != 2:
            raise ValueError(f"unsupported dlib tensor version {version}")
        n, k, nr, nc = (self.int() for _ in range(4))
        count = n * k * nr * nc
        values = np.frombuffer(self.data, "<f4", count, self.pos).copy()
        self.pos += 4 * count
        return values


@dataclass
class _Weights:
    means: tuple[float, float, float]
    convs: list[tuple[np.ndarray, dict[str, int]]]
    affines: list[np.ndarray]
    fc: np.ndarray
    fc_shape: tuple[int, int]


def _read_weights(path: Path) -> _Weights:
    data = path.read_bytes()
    means: tuple[float, float, float] | None = None
    convs, affines, fc, fc_shape = [], [], None, (0, 0)
    for match in _LAYER.finditer(data):
        name = match.group()
        # Every layer record starts with its length-prefixed name; the match must be that name, not float bytes.
        start = match.start()
        if start < 1 or data[start - 1] > 32:
            continue
        reader = _Reader(data, match.end())
        if name == b"input_rgb_image_sized":
            means = (reader.float(), reader.float(), reader.float())
        elif name == b"con_":
            reader.pos += 1  # the record's version digit ("con_4")
            params = reader.tensor()
            keys = ("filters", "rows", "cols", "stride_y", "stride_x", "pad_y", "pad_x")
            convs.append((params, dict(zip(keys, (reader.int() for _ in keys), strict=True))))
        elif name == b"affine_":
            affines.append(reader.tensor())
        elif name == b"fc_":
            reader.pos += 1
            outputs, inputs = reader.int(), reader.int()
            fc, fc_shape = reader.tensor(), (inputs, outputs)
    expected = 1 + 2 * sum(blocks for _, blocks, _ in _STAGES)
    if means is None or fc is None or len(convs) != expected or len(affines) != expected:
        raise ValueError(
            f"{path} is not dlib's face-recognition ResNet: {len(convs)} convolutions and {len(affines)} affine "
            f"layers (expected {expected}), input layer {'found' if means else 'missing'}, fc "
            f"{'found' if fc is not None else 'missing'}"
        )
    return _Weights(means, convs, affines, fc, fc_shape)


class _Conv(nn.Module):
    """dlib's con_ followed by its affine_ (a frozen batch norm: gamma * x + beta per channel)."""

    def __init__(self, params: np.ndarray, spec: dict[str, int], affine: np.ndarray, in_channels: int):
        super().__init__()
        out, rows, cols = spec["filters"], spec["rows"], spec["cols"]
        weight_size = out * in_channels * rows * cols
        if params.size != weight_size + out or affine.size != 2 * out:
            raise ValueError("dlib ResNet layer sizes do not match the architecture")
        self.conv = nn.Conv2d(  # weights and bias replaced below by the file's
            in_channels,
            out,
            (rows, cols),
            (spec["stride_y"], spec["stride_x"]),
            (spec["pad_y"], spec["pad_x"]),
        )
        self.conv.weight = nn.Parameter(
            torch.from_numpy(params[:weight_size].reshape(out, in_channels, rows, cols)), requires_grad=False
        )
        self.conv.bias = nn.Parameter(torch.from_numpy(params[weight_size:]), requires_grad=False)
        self.register_buffer("gamma", torch.from_numpy(affine[:out]).view(1, out, 1, 1))
        self.register_buffer("beta", torch.from_numpy(affine[out:]).view(1, out, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * self.gamma + self.beta


def _add_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: the sum over the larger of each dimension, a missing value counting as zero (a stage's
    first block has more channels and, after an odd-sized stride-2 convolution, fewer rows than its shortcut)."""
    shape = [max(x, y) for x, y in zip(a.shape, b.shape, strict=True)]
    out = a.new_zeros(shape)
    out[:, : a.shape[1], : a.shape[2], : a.shape[3]] += a
    out[:, : b.shape[1], : b.shape[2], : b.shape[3]] += b
    return out


class _Block(nn.Module):
    def __init__(self, first: _Conv, second: _Conv, down: bool):
        super().__init__()
        self.first, self.second, self.down = first, second, down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.second(F.relu(self.first(x)))
        shortcut = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(_add_padded(y, shortcut))


class DlibFaceNet(nn.Module):
    """The ResNet on (N, 3, 150, 150) uint8-valued RGB chips (float) → (N, 128) descriptors, as dlib computes."""

    def __init__(self, weights: _Weights):
        super().__init__()
        convs = iter(zip(weights.convs, weights.affines, strict=True))
        (params, spec), affine = next(convs)
        self.stem = _Conv(params, spec, affine, 3)
        blocks, channels = [], spec["filters"]
        for width, count, opens_down in _STAGES:
            for index in range(count):
                (p1, s1), a1 = next(convs)
                first = _Conv(p1, s1, a1, channels)
                (p2, s2), a2 = next(convs)
                second = _Conv(p2, s2, a2, width)
                blocks.append(_Block(first, second, opens_down and index == 0))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        inputs, outputs = weights.fc_shape
        if inputs != channels or weights.fc.size != inputs * outputs:
            raise ValueError("dlib ResNet fc layer does not match the architecture")
        # dlib's fc computes x @ W with W stored (inputs, outputs), row-major.
        self.fc: torch.Tensor
        self.register_buffer("fc", torch.from_numpy(weights.fc.reshape(inputs, outputs)))
        self.means: torch.Tensor
        self.register_buffer("means", torch.tensor(weights.means, dtype=torch.float32).view(1, 3, 1, 1))

    @torch.no_grad()
    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        # dlib's input_rgb_image: (pixel - channel mean) / 256.
        x = (chips.float() - self.means) / 256.0
        x = F.max_pool2d(F.relu(self.stem(x)), 3, 2)
        x = self.blocks(x)
        return x.mean(dim=(2, 3)) @ self.fc

    def descriptors(self, chips: np.ndarray, batch: int = 64) -> np.ndarray:
        """(N, 150, 150, 3) uint8 RGB chips → (N, 128) float64 descriptors."""
        out = []
        for start in range(0, len(chips), batch):
            x = torch.from_numpy(np.ascontiguousarray(chips[start : start + batch])).permute(0, 3, 1, 2)
            out.append(self(x).double().numpy())
        return np.concatenate(out) if out else np.zeros((0, 128))


@functools.cache
def load_dlib_face_net(path: str) -> DlibFaceNet:
    """The network in `path` (one instance per process)."""
    return DlibFaceNet(_read_weights(Path(path))).eval()
