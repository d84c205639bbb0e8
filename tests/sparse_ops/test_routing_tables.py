"""The one-launch routed-table builder (``sparse_ops.routing_tables``, from the kernels' bit rows) equals the PyTorch
construction (region-pair counts, ``routed_state`` + ``tables_from_state``) entry for entry, under
``TRITON_INTERPRET=1`` (set by conftest on CPU), compiled on the GPU box (``DEV``)."""
from __future__ import annotations

import pytest
import torch

from sparse_ops import patterns, routing
from sparse_ops.routing_tables import routed_tables

DEV = 'cuda' if torch.cuda.is_available() else 'cpu'


def _torch_tables(layout, pairs, max_kv, n_qb):
    return patterns.tables_from_state(routing.routed_state(layout, pairs), max_kv=max_kv, max_q=n_qb)


def _check_kernel_tables(layout, b, topk, seed):
    """Random routes (empty key regions last) -> the kernel's tables from the bit rows == the PyTorch tables."""
    torch.manual_seed(seed)
    r = layout.n_regions
    aff = torch.randn(b, r, r).to(DEV).masked_fill((layout.counts == 0)[None, None, :], float('-inf'))
    topk_idx = aff.topk(topk, dim=-1).indices
    route = torch.zeros(b, r, r, device=DEV).scatter_(2, topk_idx, 1.0)
    pairs = layout.a_q @ route @ layout.a_k.t()
    n_qb, n_kb = pairs.shape[1:]
    max_kv = min(n_kb, layout.max_kv * topk)
    want = _torch_tables(layout, pairs, max_kv, n_qb)
    bits = patterns.route_bits(route[:, layout.ranked][:, :, layout.ranked])
    got = routed_tables(bits, layout.q_grp, layout.k_grp, layout.k_full, max_kv, n_qb, layout.q_span, layout.k_span)
    for name, g, wt in zip(('kv_num', 'kv_idx', 'q_num', 'q_idx'), got, want):
        assert g.dtype == torch.int32 and g.shape == wt.shape, name
        assert torch.equal(g, wt), name
    return got


@pytest.mark.parametrize('h, w, n_win, topk, bm, bn', [
    (13, 7, 4, 3, 16, 16),      # ragged regions, some empty
    (32, 32, 4, 2, 16, 16),     # aligned: full blocks exist
    (31, 45, 5, 25, 32, 16),    # topk = all regions
    (20, 9, 3, 1, 16, 32),      # topk = 1, key blocks wider than regions
    (40, 11, 8, 4, 32, 32),     # 48 non-empty regions: bit rows of two words, blocks of up to 7 regions
])
def test_kernel_tables_equal_torch_tables(h, w, n_win, topk, bm, bn):
    layout = routing.routing_layout(h, w, n_win, bm, bn, DEV)
    for grp, n_per, span in ((layout.q_grp, layout.n_q, layout.q_span), (layout.k_grp, layout.n_k, layout.k_span)):
        assert torch.equal((grp[:, 1] - grp[:, 0] + 1).float(), n_per) and span == int(n_per.max())
    got = _check_kernel_tables(layout, 3, topk, h * 100 + w)
    if (h, w) == (32, 32):
        assert ((got[1] % 2 == 0) & (torch.arange(got[1].shape[-1], device=DEV) < got[0][..., None])).any()


def test_long_rows_are_compacted_across_chunks():
    """More than 256 key blocks and query blocks (several kernel chunks per row, both directions), every query
    region routed to every key region: running offsets and zero fill."""
    layout = routing.routing_layout(64, 72, 4, 16, 16, DEV)
    assert layout.q_grp.shape[0] > 256 and layout.k_grp.shape[0] > 256
    num, idx, q_num, _ = _check_kernel_tables(layout, 1, 16, 0)
    assert (num == layout.k_grp.shape[0]).all() and (q_num == layout.q_grp.shape[0]).all()


@pytest.mark.parametrize('h, w, n_win, bm, bn, exact', [
    (8, 8, 2, 16, 16, True),       # 4 x 4 regions of 16 tokens = the 16-token blocks
    (64, 64, 16, 16, 16, True),    # BiFormer-S stage 3 at 1024^2 with the small-region tiles
    (8, 8, 2, 32, 16, False),      # query blocks of two regions
    (8, 12, 2, 16, 16, False),     # 24-token regions
])
def test_blocks_equal_to_regions_skip_the_pair_matmul(h, w, n_win, bm, bn, exact, monkeypatch):
    """``routing_pattern``'s PyTorch path uses the routes as the block-pair counts when blocks are regions: same
    tables."""
    monkeypatch.setenv('TRITON_INTERPRET', '0')        # the PyTorch tables (the kernel does not take this shortcut)
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
