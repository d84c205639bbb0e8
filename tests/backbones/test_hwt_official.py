"""HWT against the official Hilbert-Local-Attention ``hwt.py`` semantics, written here as an independent oracle from
the facts of that file (not from ``sparse_ops.patterns`` or the twin):

- a block rolls the Hilbert sequence by ``+L//2`` (``torch.roll``, positive shift) when it shifts, cuts it into
  chunks of ``L = ws**2`` consecutive positions and, in the one chunk that wraps around, masks the two parts from
  each other; so in the original sequence the chunk boundaries are at ``ceil(L/2) + m*L``;
- odd blocks shift, except when ``min(H, W) <= ws``: then no block shifts and the window is ``min(H, W)**2``;
- the bias of a pair is ``table[(qy - ky + H - 1) * (2W - 1) + (qx - kx + W - 1), head]`` (``query - key``) in a
  ``((2H-1)(2W-1), heads)`` table of the stage's training size.
"""
import math

import pytest
import torch

from backbones.converters.hwt import convert as convert_hwt
from backbones.converters.hwt import convert_rpb_table
from backbones.hwt import HWTBlock, HilbertWindowAttention, bias_radius
from sparse_ops import hilbert_coords


# --- the oracle ---------------------------------------------------------------------------------------------------
def official_groups(n: int, hw: tuple, ws: int, odd_block: bool) -> torch.Tensor:
    """(n,) group id (in sequence order) of every Hilbert position in an official block.

    n divisible by the window: the official steps literally (roll by +L//2, chunks of L slots, the wrapped chunk
    split in two by the mask). Otherwise (the official code cannot run there; our extension as the issue states
    it): boundaries at ``L - shift + m*L`` (shifted) or ``m*L``, the ragged last chunk on its own.
    """
    short = min(hw)
    if short <= ws:
        window, shift = short * short, 0
    else:
        window, shift = ws * ws, (ws * ws // 2 if odd_block else 0)
    if n % window == 0:
        slot = torch.arange(n)
        chunk = slot // window
        head = ((chunk == 0) & (slot >= shift)).long() if shift else torch.zeros_like(slot)  # wrapped: tail | head
        group = torch.empty(n, dtype=torch.long)
        group[torch.roll(torch.arange(n), shifts=shift)] = 2 * chunk + head  # slot p holds the token rolled[p]
    else:
        first = window - shift  # number of boundaries at first + m*window that are <= i
        group = torch.div(torch.arange(n) - first, window, rounding_mode='floor') + 1
    return torch.unique_consecutive(group, return_inverse=True)[1]  # every group is a run: ids in sequence order


def official_bias(table: torch.Tensor, hw: tuple, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Official bias ``(heads, len(q), len(k))`` of query pixels q ``(M, 2)`` and key pixels k ``(S, 2)``."""
    h, w = hw
    d = q[:, None, :] - k[None, :, :]
    index = (d[..., 0] + h - 1) * (2 * w - 1) + d[..., 1] + w - 1
    return table[index].permute(2, 0, 1)


def official_window_attention(x, qkv_w, qkv_b, proj_w, proj_b, table, heads, hw, ws, odd_block):
    """One official attention branch on Hilbert tokens x ``(N, C)``: per group, softmax(q k^T * scale + bias) v."""
    n, c = x.shape
    d = c // heads
    groups = official_groups(n, hw, ws, odd_block)
    yx = hilbert_coords(*hw)
    q, k, v = (x @ qkv_w.t() + qkv_b).view(n, 3, heads, d).permute(1, 2, 0, 3)
    out = torch.zeros(heads, n, d, dtype=x.dtype)
    for g in groups.unique():
        idx = (groups == g).nonzero().flatten()
        logits = q[:, idx] @ k[:, idx].transpose(1, 2) * d ** -0.5 + official_bias(table, hw, yx[idx], yx[idx])
        out[:, idx] = logits.softmax(-1) @ v[:, idx]
    return out.permute(1, 0, 2).reshape(n, c) @ proj_w.t() + proj_b


# --- the oracle itself, on facts stated in the issue -------------------------------------------------------------
def test_oracle_shifted_boundaries_are_25_plus_49m():
    groups = official_groups(196, (14, 14), 7, odd_block=True)
    starts = [i for i in range(1, 196) if groups[i] != groups[i - 1]]
    assert starts == [25, 74, 123, 172]
    assert bool((groups[:25] == 0).all()) and bool((groups[172:] == 4).all())  # the tail: its own group
    assert official_groups(49, (7, 7), 7, odd_block=True).unique().numel() == 1  # 7x7: one window, no shift


# --- grouping of our module == the oracle's -----------------------------------------------------------------------
def _grouping_of_module(hw, ws, shift):
    """Run HilbertWindowAttention with q = k = 0 and v = identity: output row i is the mean of the one-hot rows
    of the tokens token i attends to, so its support is token i's group."""
    n = hw[0] * hw[1]
    attn = HilbertWindowAttention(n, 1, ws, shift=shift)
    with torch.no_grad():
        attn.qkv.weight.zero_()
        attn.qkv.bias.zero_()
        attn.qkv.weight[2 * n:] = torch.eye(n)
        attn.proj.weight.copy_(torch.eye(n))
        attn.proj.bias.zero_()
        attn.relative_position_bias_table.zero_()
        return attn(torch.eye(n)[None], hw)[0] > 0


@pytest.mark.parametrize('hw', [(14, 14), (21, 35), (8, 49), (9, 9), (7, 7), (7, 14), (5, 9), (1, 12), (13, 6)],
                         ids=lambda hw: f'{hw[0]}x{hw[1]}')
@pytest.mark.parametrize('shift', [False, True], ids=['even', 'odd'])
def test_grouping_and_small_map_rule_match_the_official(hw, shift):
    groups = official_groups(hw[0] * hw[1], hw, 7, odd_block=shift)
    assert torch.equal(_grouping_of_module(hw, 7, shift), groups[:, None] == groups[None, :])


def test_block_chunking_follows_the_small_map_rule():
    blk = HWTBlock(8, 1, 7, shift=True, mlp_ratio=1.0)
    assert blk.attn.chunking((8, 100)) == (49, True)
    assert blk.attn.chunking((7, 100)) == (49, False)
    assert blk.attn.chunking((100, 3)) == (9, False)
    assert HWTBlock(8, 1, 7, shift=False, mlp_ratio=1.0).attn.chunking((56, 56)) == (49, False)


# --- the bias table covers every offset inside a window -----------------------------------------------------------
def _group_extent(yx: torch.Tensor, groups: torch.Tensor) -> int:
    """Largest |dy| or |dx| between two tokens of one group."""
    g = int(groups.max()) + 1
    hi = torch.full((g, 2), -1, dtype=torch.long).scatter_reduce(0, groups[:, None].expand(-1, 2), yx, 'amax')
    lo = torch.full((g, 2), 1 << 30, dtype=torch.long).scatter_reduce(0, groups[:, None].expand(-1, 2), yx, 'amin')
    return int((hi - lo).max())


@pytest.mark.parametrize('ws', [7, 3])
def test_bias_table_covers_every_offset_for_sizes_1_to_64(ws):
    """Every offset between two tokens of one window, shifted or not, at every map size 1..64 per side, has its own
    table entry; and the premise of the bound (one curve step moves at most one pixel per axis) holds there."""
    radius, largest = bias_radius(ws), 0
    for h in range(1, 65):
        for w in range(1, 65):
            yx = hilbert_coords(h, w)
            assert h * w == 1 or int((yx[1:] - yx[:-1]).abs().max()) <= 1
            for odd in (False, True):
                largest = max(largest, _group_extent(yx, official_groups(h * w, (h, w), ws, odd)))
    assert largest <= radius
    assert largest > ws - 1  # the old +-(ws-1) table was too small: this test can fail


# --- conversion keeps every official entry ------------------------------------------------------------------------
@pytest.mark.parametrize('stage', [56, 28, 14, 7, 2])
def test_converted_table_keeps_every_official_entry(stage):
    heads, ws = 3, 7
    table = torch.randn((2 * stage - 1) ** 2, heads)
    ours, r = convert_rpb_table(table, ws), bias_radius(ws)
    assert ours.shape == (heads, 2 * r + 1, 2 * r + 1)
    reach = stage - 1
    for dy in range(-r, r + 1):  # ours: key - query; official: query - key
        for dx in range(-r, r + 1):
            cy, cx = max(-reach, min(reach, dy)), max(-reach, min(reach, dx))  # nearest official entry
            row = (-cy + stage - 1) * (2 * stage - 1) + (-cx + stage - 1)
            assert torch.equal(ours[:, dy + r, dx + r], table[row]), (dy, dx)


@pytest.mark.parametrize('hw, odd', [((14, 14), False), ((14, 14), True), ((28, 28), True), ((7, 7), True)],
                         ids=['14-even', '14-odd', '28-odd', '7-odd-small'])
def test_converted_attention_equals_the_official(hw, odd):
    """An official attention branch (oracle, random weights drawn wide) and ours after conversion agree."""
    torch.manual_seed(0)
    heads, c, ws = 2, 16, 7
    x = torch.randn(hw[0] * hw[1], c)
    qkv_w, qkv_b = torch.randn(3 * c, c) * 0.5, torch.randn(3 * c)
    proj_w, proj_b = torch.randn(c, c) * 0.3, torch.randn(c)
    table = torch.randn((2 * hw[0] - 1) * (2 * hw[1] - 1), heads) * 3.0
    want = official_window_attention(x, qkv_w, qkv_b, proj_w, proj_b, table, heads, hw, ws, odd)
    prefix = 'layers.0.blocks.1.attn.'
    official = {prefix + 'qkv.weight': qkv_w, prefix + 'qkv.bias': qkv_b, prefix + 'proj.weight': proj_w,
                prefix + 'proj.bias': proj_b, prefix + 'relative_position_bias_table': table}
    converted = {k[len(prefix):]: v for k, v in convert_hwt(official, window_size=ws).items()}
    ours = HilbertWindowAttention(c, heads, ws, shift=odd)
    ours.load_state_dict(converted, strict=True)
    with torch.no_grad():
        got = ours(x[None], hw)[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert math.isfinite(float(got.abs().max()))
