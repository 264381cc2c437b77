"""Parameter and multiply-accumulate counts.

`count_macs` counts multiply-accumulates (MACs) of convolutions and matrix products, the convention of thop and
fvcore and of the paper's "42.53 GFLOPs". `torch.utils.flop_counter` counts 2 FLOPs per MAC; we halve it.
Element-wise ops (BN, activations, attention gates) are not counted, as in those tools.
"""

from __future__ import annotations

import contextlib
import io
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


def ptflops_macs(model: nn.Module, input_shapes: Sequence[Sequence[int]]) -> int | None:
    """The same forward pass counted by ptflops (a counter the literature uses; its PyTorch backend also counts
    bias additions, normalisation and activations, so it reads a little above `count_macs`). None when ptflops
    is not installed (it is in the `eval` and `test` extras)."""
    try:
        import ptflops
    except ImportError:
        return None
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None else torch.float32

    def inputs(_: tuple) -> dict[str, list[torch.Tensor]]:
        return {"args": [torch.zeros(tuple(s), device=device, dtype=dtype) for s in input_shapes]}

    was_training = model.training
    model.eval()
    try:
        # ptflops prints a batch-size note for keyword inputs: kept off our output.
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            macs, _ = ptflops.get_model_complexity_info(
                _Positional(model),
                tuple(input_shapes[0]),
                input_constructor=inputs,
                as_strings=False,
                print_per_layer_stat=False,
                backend="pytorch",
            )
    finally:
        model.train(was_training)
    return None if macs is None else int(macs)


class _Positional(nn.Module):
    """ptflops calls model(**kwargs): this passes them on as positional arguments."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, args: list[torch.Tensor]) -> torch.Tensor:
        return self.model(*args)
