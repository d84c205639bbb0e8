"""``tools/specialization_keys.py``: a new input size asks Triton for no new specialisation key.

Every Triton op family (window attention with a position bias, dilated 2D NA, routing with the split dK/dV pass,
layer norm, depthwise conv) runs forward + backward at three sizes; the launches are recorded, not run. The kernels'
``do_not_specialize`` lists are what keeps the keys of the 2nd and 3rd size equal to the first's (without them: 24
new keys here). The token counts are not multiples of 16 at any of the three sizes: the dK/dV pass keeps N
specialised on purpose (two states, ``block_sparse_bwd.SIZE_ARGS_DKDV``).
"""
import importlib.util
from pathlib import Path

import torch

import sparse_ops

ROOT = Path(__file__).resolve().parents[2]
SIZES = [(44, 53), (49, 47), (52, 57)]      # N % 16 = 12, 15, 4; the routing takes the split dK/dV pass


def _tool():
    spec = importlib.util.spec_from_file_location('specialization_keys', ROOT / 'tools/specialization_keys.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _step(h, w):
    """Forward + backward of every op family at one size (B1, 2 heads, D32, 32 channels)."""
    t = lambda *s: torch.randn(*s, requires_grad=True)  # noqa: E731
    q, k, v = (t(1, 2, h * w, 32) for _ in range(3))
    q2, k2, v2 = (t(1, 2, h, w, 32) for _ in range(3))
    x, res = t(1, h, w, 32), t(1, h, w, 32)
    outs = [sparse_ops.hilbert_window_attention(q, k, v, 7, rpb=t(2, 13, 13), hw=(h, w)),
            sparse_ops.neighborhood_attention_2d(q2, k2, v2, 7, dilation=2),
            sparse_ops.bilevel_routing_attention(q2, k2, v2, 4, 4),
            sparse_ops.layer_norm(x, t(32), t(32)),
            sparse_ops.depthwise_conv2d(x, t(32, 1, 5, 5), t(32), res)]
    sum(o.sum() for o in outs).backward()


def test_no_new_specialisation_key_after_the_first_size():
    keys = _tool().count_keys(_step, SIZES)
    expected = {'_block_sparse_fwd_kernel', '_block_sparse_bwd_dq_kernel', '_block_sparse_bwd_dkdv_kernel',
                '_block_sparse_bwd_dkdv_reduce_kernel', '_split_tables_kernel', '_routed_tables_kernel',
                '_ln_fwd_kernel', '_ln_bwd_kernel', '_dwconv_fwd_kernel', '_dwconv_dw_kernel'}
    assert expected <= set(keys), sorted(keys)
    new = {kernel: [key for key, first in ks.items() if first > 0] for kernel, ks in keys.items()}
    new = {kernel: ks for kernel, ks in new.items() if ks}
    assert not new, f'new keys after the first size: {new}'


def test_launch_count_of_a_training_step():
    """``--launches``: an HWT block's forward + backward is 10 Triton launches (two layer norms forward and
    backward; attention forward, dQ and dK/dV, each with its exact NaN pass), counted on the third step; PyTorch
    kernels count computing ops only (no views, no allocations, not the recorder's own zeroing)."""
    tool = _tool()
    arch = dict(embed_dims=32, depths=(1, 2), num_heads=(1, 2), window_size=7, mlp_ratio=2.0)
    triton_launches, aten = tool.count(dict(type='HWT', arch=arch, out_indices=(0, 1)), [(64, 96)], 1,
                                       launches=True)
    assert triton_launches == {'_ln_fwd_kernel': 6, '_ln_bwd_kernel': 6, '_block_sparse_fwd_kernel': 6,
                               '_block_sparse_bwd_dq_kernel': 6, '_block_sparse_bwd_dkdv_kernel': 6}
    assert aten['mm'] > 0 and aten['addmm'] > 0
    assert not set(aten) & tool.NOT_KERNELS
    assert aten['zero_'] == 0, aten
