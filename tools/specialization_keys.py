"""Count the Triton specialisation keys a backbone's training step asks for over a list of input sizes, on a CPU.

Triton compiles one binary per (kernel, key). The key holds the constexpr values, the launch options (warps,
stages) and, per plain argument, its type plus a specialisation: an int equal to 1 becomes the constant 1, an int
divisible by 16 is marked so, a pointer 16-byte aligned is marked so (``native_specialize_impl``, the same rule in
Triton 3.6 and this machine's 3.9), except for the arguments a kernel names in ``do_not_specialize`` /
``do_not_specialize_on_alignment``. Each key new after the first size is a recompile in multi-scale training.

How: ``TRITON_INTERPRET=1``, the backbone runs forward + backward with ``use_backend('triton')`` (the fused /
Triton paths of a CUDA device, fp32), and every kernel launch is intercepted: its key is computed from the arguments
and the kernel is *not* run (its outputs stay as allocated, int tensors zeroed so that index outputs stay valid;
no Python control flow reads a kernel's output). The host-side choices that differ between the interpreter and a
CUDA device are those of an H100 (132 SMs): attention tiles (``default_config``), the layer-norm / depthwise-conv
backward program counts. Not covered: kernels that only CUDA autocast reaches (HNT's ``PreNorm`` kernel).

Usage: python tools/specialization_keys.py [--models HWT-T ...] [--sizes 480x640 ...] [--batch 2] [--keys]
    [--launches]
Prints one table: per backbone and kernel the distinct keys over all sizes and those added after the first size;
``--keys`` also names, per kernel, the arguments in which each added key differs from the closest earlier one.
``--launches`` prints instead the kernel launches of one training step at the first size (the third step: caches
warm, gradients set to None in between): Triton launches and PyTorch kernels (aten ops that compute; views and
allocations not counted), fp32 without autocast. Without graph replay, every launch costs host time.
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import os
import os.path as osp
import sys
from collections import Counter, defaultdict
from unittest import mock

os.environ['TRITON_INTERPRET'] = '1'          # before sparse_ops imports its kernel modules
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import torch  # noqa: E402
from triton._C.libtriton import native_specialize_impl  # noqa: E402
from triton.backends.compiler import BaseBackend  # noqa: E402
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from benchmark_backbone import MODELS  # noqa: E402  (name -> config of our backbones)

SIZES = [(480 + 32 * (i % 11), 640 + 32 * ((7 * i) % 22)) for i in range(16)]
H100_SMS = 132


def launch_key(fn: InterpretedFunction, args: tuple, kwargs: dict) -> tuple:
    """The key Triton's launcher computes for ``fn[grid](*args, **kwargs)``: per parameter (name, type,
    specialisation), constexprs by value, then the launch options."""
    params = inspect.signature(fn.fn).parameters
    bound = inspect.signature(fn.fn).bind_partial(*args, **{k: v for k, v in kwargs.items() if k in params})
    bound.apply_defaults()
    no_spec = set(fn.kwargs.get('do_not_specialize') or ())
    no_align = set(fn.kwargs.get('do_not_specialize_on_alignment') or ())
    key = []
    for i, (name, p) in enumerate(params.items()):
        value = bound.arguments[name]
        if 'constexpr' in str(p.annotation):
            key.append((name, 'constexpr', value))
        else:
            spec = not ({i, name} & no_spec)
            align = not ({i, name} & no_align)
            key.append((name, *native_specialize_impl(BaseBackend, value, False, spec, align)))
    return tuple(key) + tuple(sorted((k, v) for k, v in kwargs.items() if k not in params))


class KeyRecorder:
    """Replaces every interpreted launch by a record of its key: ``keys[kernel][key]`` = index of the first size
    (``self.step``) that asked for it."""

    def __init__(self):
        self.keys = defaultdict(dict)
        self.step = 0
        self.launches = Counter()
        self.in_launch = False

    def run(self, fn, *args, grid, warmup, **kwargs):
        self.keys[fn.__name__].setdefault(launch_key(fn, args, kwargs), self.step)
        self.launches[fn.__name__] += 1
        self.in_launch = True
        for a in args:
            if isinstance(a, torch.Tensor) and not a.is_floating_point():
                a.zero_()        # index outputs: valid (0) for whatever reads them next
        self.in_launch = False
        return None


NOT_KERNELS = {'view', '_unsafe_view', 'as_strided', 'empty', 'empty_strided', 'empty_like', 'new_empty',
               'new_empty_strided', 't', 'transpose', 'permute', 'expand', 'reshape', 'unsqueeze', 'squeeze', 'slice',
               'select', 'split', 'split_with_sizes', 'chunk', 'unbind', 'detach', 'alias', 'unflatten', 'flatten',
               'set_', 'lift_fresh'}
"""aten ops that launch no kernel on a CUDA device (views, allocations)."""


def count_launches(step, size, recorder: KeyRecorder) -> tuple[Counter, Counter]:
    """``(Triton launches by kernel, PyTorch kernels by aten op)`` of the third ``step(h, w)`` at ``size``."""
    import sparse_ops
    from torch.utils._python_dispatch import TorchDispatchMode
    aten = Counter()

    class Kernels(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func._schema.name.split('::')[-1]
            if name not in NOT_KERNELS and not recorder.in_launch:
                aten[name] += 1
            return func(*args, **(kwargs or {}))
    try:
        with as_on_h100(recorder), sparse_ops.use_backend('triton'):
            step(*size)
            step(*size)
            recorder.launches.clear()
            with Kernels():
                step(*size)
    finally:
        sparse_ops.clear_caches()
    return recorder.launches, aten


@contextlib.contextmanager
def as_on_h100(recorder: KeyRecorder):
    """Intercept the launches; make the host-side choices an H100 would (tiles, program counts)."""
    from sparse_ops import block_sparse, block_sparse_fwd, dwconv_triton, triton_api
    original = block_sparse_fwd.default_config

    def cuda_default_config(head_dim, device=None, mask_mode=None, region_tokens=None):
        with mock.patch.object(block_sparse_fwd, '_interpret', lambda: False):
            return original(head_dim, None, mask_mode, region_tokens)

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(InterpretedFunction, 'run',
                                              lambda fn, *a, **kw: recorder.run(fn, *a, **kw)))
        for module in (block_sparse_fwd, block_sparse, triton_api):
            stack.enter_context(mock.patch.object(module, 'default_config', cuda_default_config))
        stack.enter_context(mock.patch.object(dwconv_triton, '_sm_count', lambda device: H100_SMS))
        yield


def count_keys(step, sizes) -> dict:
    """``{kernel: {key: index of the first size that asked for it}}`` of ``step(h, w)`` run at each size, under
    ``use_backend('triton')`` with the launches recorded, not run."""
    import sparse_ops
    recorder = KeyRecorder()
    try:
        with as_on_h100(recorder), sparse_ops.use_backend('triton'):
            for i, (h, w) in enumerate(sizes):
                recorder.step = i
                step(h, w)
    finally:
        sparse_ops.clear_caches()     # the cached tables and orders were zeroed as kernel arguments
    return dict(recorder.keys)


def count(model_cfg: dict, sizes, batch: int = 2, launches: bool = False):
    """:func:`count_keys` of one backbone's training step (forward + backward, batch ``batch``), or with
    ``launches`` :func:`count_launches` at the first size."""
    import backbones  # noqa: F401  (registers the backbones)
    from mmengine.registry import MODELS as REGISTRY
    torch.manual_seed(0)
    model = REGISTRY.build(dict(model_cfg, cuda_graphs=False)).train()

    def step(h, w):
        outs = model(torch.randn(batch, 3, h, w))
        sum(o.float().sum() for o in outs).backward()
        model.zero_grad(set_to_none=True)
    return count_launches(step, sizes[0], KeyRecorder()) if launches else count_keys(step, sizes)


def table(results: dict) -> str:
    """Markdown: backbone, kernel, distinct keys, keys added after the first size; a total row per backbone."""
    lines = ['| backbone | kernel | keys | new after first size |', '|---|---|---:|---:|']
    for name, keys in results.items():
        total = new = 0
        for kernel in sorted(keys):
            k = len(keys[kernel])
            n = sum(1 for first in keys[kernel].values() if first > 0)
            total, new = total + k, new + n
            lines.append(f'| {name} | {kernel} | {k} | {n} |')
        lines.append(f'| **{name}** | **total** | **{total}** | **{new}** |')
    return '\n'.join(lines)


def new_key_causes(keys: dict) -> dict:
    """``{kernel: {argument names: count}}``: for each key added after the first size, the arguments in which it
    differs from the closest key of an earlier size (what to look at)."""
    out = {}
    for kernel, ks in keys.items():
        causes = defaultdict(int)
        for key, first in ks.items():
            earlier = [k for k, f in ks.items() if f < first]
            if first == 0 or not earlier:
                continue
            diffs = [tuple(x[0] for x, y in zip(key, k) if x != y) for k in earlier]
            causes[', '.join(min(diffs, key=len))] += 1
        if causes:
            out[kernel] = dict(causes)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--models', nargs='+', default=list(MODELS), choices=list(MODELS))
    ap.add_argument('--sizes', nargs='+', default=None, help='HxW each (default: the 16 multi-scale sizes)')
    ap.add_argument('--batch', type=int, default=2)
    ap.add_argument('--keys', action='store_true', help='also name the arguments that made each new key (stderr)')
    ap.add_argument('--launches', action='store_true', help='count the launches of one step at the first size')
    args = ap.parse_args(argv)
    sizes = [tuple(int(v) for v in s.split('x')) for s in args.sizes] if args.sizes else SIZES
    torch.set_flush_denormal(True)
    if args.launches:
        print(f'one training step at {sizes[0][0]}x{sizes[0][1]}, batch {args.batch}, fp32\n'
              '| backbone | Triton launches | PyTorch kernels | total | most frequent PyTorch kernels |\n'
              '|---|---:|---:|---:|---|')
        for name in args.models:
            tri, aten = count(MODELS[name], sizes, args.batch, launches=True)
            top = ', '.join(f'{k} {n}' for k, n in aten.most_common(5))
            print(f'| {name} | {sum(tri.values())} | {sum(aten.values())} | {sum(tri.values()) + sum(aten.values())} '
                  f'| {top} |')
        return
    results = {}
    for name in args.models:
        results[name] = count(MODELS[name], sizes, args.batch)
        if args.keys:
            for kernel, causes in sorted(new_key_causes(results[name]).items()):
                print(f'{name} {kernel}: {causes}', file=sys.stderr)
    print(f'{len(sizes)} sizes, batch {args.batch}: {", ".join(f"{h}x{w}" for h, w in sizes)}')
    print(table(results))


if __name__ == '__main__':
    main()
