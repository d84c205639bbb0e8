"""The one-launch routed-table builder (``sparse_ops.routing_tables``) equals the PyTorch construction
(``routed_state`` + ``tables_from_state``) entry for entry, under ``TRITON_INTERPRET=1`` (set by conftest on CPU)."""
from __future__ import annotations

import pytest
import torch

from sparse_ops import patterns, routing
from sparse_ops.routing_tables import routed_tables


def _torch_tables(layout, pairs, max_kv, n_qb):
    return patterns.tables_from_state(routing.routed_state(layout, pairs), max_kv=max_kv, max_q=n_qb)


@pytest.mark.parametrize('h, w, n_win, topk, bm, bn', [
    (13, 7, 4, 3, 16, 16),      # ragged regions, some empty
    (32, 32, 4, 2, 16, 16),     # aligned: full blocks exist
    (31, 45, 5, 25, 32, 16),    # topk = all regions
    (20, 9, 3, 1, 16, 32),      # topk = 1, key blocks wider than regions
    (64, 60, 8, 4, 32, 32),     # rows longer than the kernel's 256-column chunk (n_kb > 256 needs 8192 tokens)
])
def test_kernel_tables_equal_torch_tables(h, w, n_win, topk, bm, bn):
    torch.manual_seed(h * 100 + w)
    layout = routing.routing_layout(h, w, n_win, bm, bn, 'cpu')
    b, r = 3, n_win * n_win
    aff = torch.randn(b, r, r).masked_fill((layout.counts == 0)[None, None, :], float('-inf'))
    topk_idx = aff.topk(topk, dim=-1).indices
    route = torch.zeros(b, r, r).scatter_(2, topk_idx, 1.0)
    pairs = layout.a_q @ route @ layout.a_k.t()
    n_qb, n_kb = pairs.shape[1:]
    max_kv = min(n_kb, layout.max_kv * topk)
    want = _torch_tables(layout, pairs, max_kv, n_qb)
    got = routed_tables(pairs, layout.n_q, layout.n_k, layout.k_full, max_kv, n_qb)
    for name, g, wt in zip(('kv_num', 'kv_idx', 'q_num', 'q_idx'), got, want):
        assert g.dtype == torch.int32 and g.shape == wt.shape, name
        assert torch.equal(g, wt), name
    if (h, w) == (32, 32):
        assert ((got[1] % 2 == 0) & (torch.arange(got[1].shape[-1]) < got[0][..., None])).any()


def test_long_rows_are_compacted_across_chunks():
    """A row with more than 256 visited columns (several kernel chunks): running offsets and zero fill."""
    torch.manual_seed(0)
    c = 700
    pairs = (torch.rand(2, 3, c) < 0.6).float() * torch.randint(1, 3, (2, 3, c)).float()
    row_cnt, col_cnt = torch.ones(3), torch.ones(c)
    k_full = (torch.rand(c) < 0.5).to(torch.int8)
    num, idx, _, _ = routed_tables(pairs, row_cnt, col_cnt, k_full, c, 3)
    for z in range(2):
        for r in range(3):
            cols = torch.nonzero(pairs[z, r] > 0.5).flatten()
            full = (pairs[z, r, cols] >= 0.5) & (k_full[cols] != 0)
            want = (cols * 2 + (~full).to(torch.int64)).to(torch.int32)
            assert num[z, r] == len(cols)
            assert torch.equal(idx[z, r, :len(cols)], want)
            assert (idx[z, r, len(cols):] == 0).all()


@pytest.mark.parametrize('h, w, n_win, bm, bn, exact', [
    (8, 8, 2, 16, 16, True),       # 4 x 4 regions of 16 tokens = the 16-token blocks
    (64, 64, 16, 16, 16, True),    # BiFormer-S stage 3 at 1024^2 with the small-region tiles
    (8, 8, 2, 32, 16, False),      # query blocks of two regions
    (8, 12, 2, 16, 16, False),     # 24-token regions
])
def test_blocks_equal_to_regions_skip_the_pair_matmul(h, w, n_win, bm, bn, exact):
    """``routing_pattern`` uses the routes as the block-pair counts when blocks are regions: same tables."""
    layout = routing.routing_layout(h, w, n_win, bm, bn, 'cpu')
    assert layout.blocks_are_regions == exact
    r, topk = n_win * n_win, max(1, n_win * n_win // 3)
    topk_idx = torch.randn(2, r, r).topk(topk, dim=-1).indices
    got = routing.routing_pattern(layout, topk_idx)
    route = torch.zeros(2, r, r).scatter_(2, topk_idx, 1.0)
    pairs = layout.a_q @ route @ layout.a_k.t()
    want = _torch_tables(layout, pairs, min(pairs.shape[2], layout.max_kv * topk), pairs.shape[1])
    for name, g, wt in zip(('kv_num', 'kv_idx', 'q_num', 'q_idx'), (got.kv_num, got.kv_idx, got.q_num, got.q_idx),
                           want):
        assert torch.equal(g, wt), name
