"""Parameter and multiply-accumulate counts.

`count_macs` counts multiply-accumulates (MACs) of convolutions and matrix products, the convention of thop and
fvcore and of the paper's "42.53 GFLOPs". `torch.utils.flop_counter` counts 2 FLOPs per MAC; we halve it.
Element-wise ops (BN, activations, attention gates) are not counted, as in those tools.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, input_shapes: Sequence[Sequence[int]]) -> int:
    """FLOPs with the 2-per-multiply-accumulate convention (= 2 x count_macs)."""
    if not input_shapes:
        raise ValueError("input_shapes needs one shape per forward argument")
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None else torch.float32
    inputs = [torch.zeros(tuple(shape), device=device, dtype=dtype) for shape in input_shapes]
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(*inputs)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def count_macs(model: nn.Module, input_shapes: Sequence[Sequence[int]]) -> int:
    """Multiply-accumulates for one forward pass with zero inputs of the given shapes (one per argument)."""
    return count_flops(model, input_shapes) // 2
