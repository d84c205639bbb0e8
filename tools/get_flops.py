"""FLOPs and parameters of a detector / segmentor at a given input size, with the sparse attention counted.

mmengine's ``get_model_complexity_info`` traces the model and counts the aten ops it knows (conv, linear, matmul,
...). It cannot count our sparse attention correctly: the Triton kernels are opaque to the tracer, and the PyTorch
twins compute more than the pattern needs (masked or gathered work). So, while counting, every public
``sparse_ops`` attention function is replaced by a counter that adds the pattern's exact (window, band, 1D / 2D
neighbourhood) or upper-bound (routing: top-k full regions) multiply-accumulates, 2 x queries x keys-per-query x D
per head (QK^T and AV), and returns a zero tensor of q's shape (free for the tracer; the rest of the network keeps
its shapes). Counts are multiply-accumulates, as mmengine reports them ("FLOPs" in the mmdet / mmseg tables).

The whole network runs in mmengine's ``tensor`` mode on one synthetic image (detectors: backbone, neck, RPN and RoI
heads; data-dependent parts such as the number of proposals after NMS follow the synthetic input).

    python tools/get_flops.py CONFIG [--shape 800 1333 | --shape 512] [--cfg-options k=v ...]
"""
from __future__ import annotations

import argparse
import math
import os.path as osp
import sys
from contextlib import contextmanager

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import torch  # noqa: E402

import _runtime  # noqa: E402
from benchmark import build_model, load_cfg, num_classes_of, synthetic_batch  # noqa: E402

ATTENTION_FUNCTIONS = ('hilbert_window_attention', 'hilbert_slide_attention', 'hilbert_neighborhood_attention_1d',
                       'neighborhood_attention_2d', 'bilevel_routing_attention')


# ------------------------------------------------------------------------------------------------- keys per query
def window_keys(n: int, window: int, shift: bool = False) -> int:
    """Sum over queries of the keys each attends to: chunks of `window` tokens (first chunk window//2 if shifted)."""
    first = window // 2 if shift else window
    sizes, start = [], 0
    if shift and first:
        sizes.append(min(first, n))
        start = first
    while start < n:
        sizes.append(min(window, n - start))
        start += window
    return sum(s * s for s in sizes)


def band_keys(n: int, window: int) -> int:
    """Sum over i < n of #{j < n : |i - j| <= window // 2}."""
    r = window // 2
    return sum(min(n - 1, i + r) - max(0, i - r) + 1 for i in range(n)) if n < 4 * r + 4 \
        else n * (2 * r + 1) - r * (r + 1)


def na2d_keys(h: int, w: int, kernel: int, dilation: int = 1) -> int:
    """NATTEN semantics: each query sees min(k, sub-grid side)^2 keys of its dilation sub-grid."""
    total = 0
    for oy in range(min(dilation, h)):
        sh = len(range(oy, h, dilation))
        for ox in range(min(dilation, w)):
            sw = len(range(ox, w, dilation))
            total += sh * sw * min(kernel, sh) * min(kernel, sw)
    return total


def routing_keys(h: int, w: int, n_win: int, topk: int) -> int:
    """Upper bound: every query attends to topk full regions of ceil(h/n) x ceil(w/n) tokens (at most h*w)."""
    rh, rw = math.ceil(h / n_win), math.ceil(w / n_win)
    return h * w * min(h * w, topk * rh * rw)


class AttentionCounter:
    """Replaces the public sparse_ops functions; ``macs`` accumulates per function name."""

    def __init__(self):
        self.macs: dict[str, int] = {}

    def _add(self, name: str, q: torch.Tensor, keys: int) -> None:
        b, heads, d = q.shape[0], q.shape[1], q.shape[-1]
        self.macs[name] = self.macs.get(name, 0) + 2 * int(b) * int(heads) * int(d) * int(keys)

    def make(self, name: str):
        def counted(q, k, v, *args, **kwargs):
            if name == 'hilbert_window_attention':
                window = args[0] if args else kwargs['window']
                shift = args[1] if len(args) > 1 else kwargs.get('shift', False)
                keys = window_keys(q.shape[2], window, shift)
            elif name == 'hilbert_slide_attention':
                keys = band_keys(q.shape[2], args[0] if args else kwargs['window'])
            elif name == 'hilbert_neighborhood_attention_1d':
                keys = q.shape[2] * min(args[0] if args else kwargs['kernel'], q.shape[2])
            elif name == 'neighborhood_attention_2d':
                kernel = args[0] if args else kwargs['kernel_size']
                dilation = args[1] if len(args) > 1 else kwargs.get('dilation', 1)
                keys = na2d_keys(q.shape[2], q.shape[3], kernel, dilation)
            else:
                n_win = args[0] if args else kwargs['n_win']
                topk = args[1] if len(args) > 1 else kwargs['topk']
                keys = routing_keys(q.shape[2], q.shape[3], n_win, topk)
            self._add(name, q, keys)
            return torch.zeros_like(q)
        return counted

    def make_qkv(self):
        """``sparse_ops.qkv_attention``: counted as the pattern's function on the split heads (same MACs)."""
        from sparse_ops.packed import _PATTERNS, _heads

        def counted(qkv, num_heads, pattern, *args, **kwargs):
            q = _heads(qkv, num_heads)[0]
            self.make(_PATTERNS[pattern][1])(q, q, q, *args, **kwargs)
            return qkv.new_zeros(qkv.shape[:-1] + (qkv.shape[-1] // 3,))
        return counted

    @property
    def total(self) -> int:
        return sum(self.macs.values())


@contextmanager
def counting_sparse_attention():
    """Within the block, ``sparse_ops.<fn>`` (and module globals bound to it) count instead of computing."""
    import sparse_ops
    counter = AttentionCounter()
    originals = {n: getattr(sparse_ops, n) for n in ATTENTION_FUNCTIONS + ('qkv_attention',)}
    patched = []  # (module or namespace, attribute, original)
    for mod in list(sys.modules.values()):
        name = getattr(mod, '__name__', '') or ''
        if not name.split('.')[0] in ('sparse_ops', 'backbones', 'heads'):
            continue
        for attr, fn in originals.items():
            if getattr(mod, attr, None) is fn and not name.startswith(('sparse_ops.functional', 'sparse_ops.packed')):
                patched.append((mod, attr, fn))
    try:
        for mod, attr, _ in patched:
            setattr(mod, attr, counter.make_qkv() if attr == 'qkv_attention' else counter.make(attr))
        yield counter
    finally:
        for mod, attr, fn in patched:
            setattr(mod, attr, fn)


# ------------------------------------------------------------------------------------------------- main
def count(cfg, scope: str, shape: tuple[int, int]) -> dict:
    """mmengine's analysis of the whole model in tensor mode + our sparse attention count, on CPU, batch 1."""
    from mmengine.analysis import get_model_complexity_info
    model = build_model(cfg, scope, 'cpu').eval()
    h, w = shape
    data = model.data_preprocessor(synthetic_batch(scope, 1, h, w, num_classes_of(cfg), False), False)

    class TensorMode(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, inputs):
            return self.model(inputs, data['data_samples'], mode='tensor')

    with counting_sparse_attention(), torch.no_grad():  # the tracer sees free attention (it traces twice)
        info = get_model_complexity_info(TensorMode(), inputs=(data['inputs'], ), show_table=False,
                                         show_arch=False)
    with counting_sparse_attention() as counter, torch.no_grad():  # one plain forward counts the attention
        TensorMode()(data['inputs'])
    traced = int(info['flops'])
    return dict(traced_macs=traced, sparse_attention_macs=counter.total, per_function=dict(counter.macs),
                total_macs=traced + counter.total, params=int(info['params']), input_shape=list(data['inputs'].shape))


def _g(x: int) -> str:
    return f'{x / 1e9:.2f} G'


def main(argv=None) -> int:
    from mmengine.config import DictAction
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('config')
    ap.add_argument('--shape', type=int, nargs='+', default=[800, 1333], metavar='SIZE',
                    help='input image size: H W, or one int for a square image (default 800 1333)')
    ap.add_argument('--cfg-options', nargs='+', action=DictAction, default=None,
                    help='override config keys, e.g. model.backbone.arch=small')
    args = ap.parse_args(argv)
    if len(args.shape) > 2 or min(args.shape) < 1:
        ap.error(f'--shape takes one or two positive ints (H W), got {args.shape}')
    shape = (args.shape[0], args.shape[-1])
    try:
        cfg, scope = load_cfg(args.config, args.cfg_options)
    except _runtime.ConfigCheckError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    r = count(cfg, scope, shape)
    print(f'config: {args.config}\ninput: {r["input_shape"]}')
    print(f'FLOPs (multiply-accumulates): {_g(r["total_macs"])} = traced {_g(r["traced_macs"])} '
          f'+ sparse attention {_g(r["sparse_attention_macs"])}')
    for name, macs in sorted(r['per_function'].items()):
        print(f'    {name}: {_g(macs)}' + (' (upper bound)' if name == 'bilevel_routing_attention' else ''))
    print(f'parameters: {r["params"] / 1e6:.2f} M')
    return 0


if __name__ == '__main__':
    sys.exit(main())
