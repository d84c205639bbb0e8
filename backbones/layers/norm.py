"""``PreNorm``: the LayerNorm in front of a Linear, emitting autocast's dtype directly on CUDA.

Under autocast ``nn.LayerNorm`` returns fp32 and the Linear after it casts that to bf16 / fp16 (and the backward
casts the gradient back). ``PreNorm`` is ``nn.LayerNorm`` (same parameters, names and init) whose CUDA autocast
forward is ``sparse_ops.layer_norm(..., out_dtype=<autocast dtype>)``: one Triton kernel each way instead of the
norm, the cast and PyTorch's separate weight-gradient kernel, with the same values (fp32 statistics, one rounding
to the autocast dtype). Use it only where every consumer of the output casts it to the autocast dtype anyway (a
Linear; the attention's qkv). Without autocast, on CPU, under ``torch.compile`` (Inductor fuses the norm and the
cast itself) and under ``sparse_ops.use_backend('torch')`` it computes what ``nn.LayerNorm`` + autocast's cast
compute.
"""
from __future__ import annotations

import torch
from torch import nn

import sparse_ops

__all__ = ['PreNorm']


class PreNorm(nn.LayerNorm):
    """``nn.LayerNorm(dims, eps)`` over the last dim: ``(..., C) -> (..., C)``; under CUDA autocast the output has
    autocast's dtype.

    ``min_elements``: inputs with fewer elements take PyTorch's norm + cast, whose launch costs less host time;
    there the GPU waits for the host anyway and the kernel's saving would not show. Larger ones call
    ``sparse_ops.layer_norm``, whose ``choose_kernel`` (the ``use_backend`` default) picks the kernel where it runs,
    else its twin (PyTorch's norm + cast); a forced 'triton' that cannot run raises there.
    """

    min_elements = 1 << 22

    def __init__(self, dims: int, eps: float = 1e-5) -> None:
        super().__init__(dims, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (x.is_cuda and torch.is_autocast_enabled('cuda')):
            return super().forward(x)
        low = torch.get_autocast_dtype('cuda')
        if x.numel() >= self.min_elements and not torch.compiler.is_compiling():
            return sparse_ops.layer_norm(x, self.weight, self.bias, self.eps, out_dtype=low)
        return super().forward(x).to(low)
