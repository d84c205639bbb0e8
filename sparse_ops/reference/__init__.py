"""Pure-PyTorch twins of the sparse_ops attention functions (same signatures as the public functions).

They are the CPU path of the backbones and the reference of the Triton kernels: differentiable, any size,
memory linear in the number of tokens (no N x N matrix). One concept per module:

- ``hilbert_1d``: Hilbert windows, band (slide) and 1D neighbourhood attention on ``(B, heads, N, D)``.
- ``neighborhood_2d``: 2D (dilated) neighbourhood attention on ``(B, heads, H, W, D)``.
- ``routing``: BiFormer bi-level routing attention on ``(B, heads, H, W, D)``.
"""
from .hilbert_1d import (band_ranges, hilbert_neighborhood_attention_1d, hilbert_slide_attention,
                         hilbert_window_attention, neighborhood_1d_ranges, range_attention, window_ranges)
from .neighborhood_2d import axis_neighbors, neighborhood_attention_2d
from .routing import bilevel_routing_attention, region_partition, route_regions

__all__ = ['hilbert_window_attention', 'hilbert_slide_attention', 'hilbert_neighborhood_attention_1d',
           'neighborhood_attention_2d', 'bilevel_routing_attention', 'window_ranges', 'band_ranges',
           'neighborhood_1d_ranges', 'range_attention', 'axis_neighbors', 'region_partition', 'route_regions']
