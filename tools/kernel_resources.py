"""Compile the block-sparse attention kernels of a checkout for an H100 (sm_90) without a GPU; report registers,
spills, shared memory, compile time and the main loop's load pipelining per kernel variant: a CPU-side check of a
kernel change's register cost (occupancy, spills) and load schedule before it reaches the GPU box. Needs Triton
>= 3.4 (``triton.knobs``; its bundled ptxas and cuobjdump). Numbers are those of this machine's Triton and ptxas,
not the box's (Triton 3.6): compare two checkouts in one run rather than against recorded values.

Usage: python tools/kernel_resources.py ROOT [ROOT2] [--json OUT.json] [--only SUBSTR] [--config BM,BN,W,S]
(ROOT: a checkout, e.g. /work/main; the script puts ROOT first on sys.path and imports its sparse_ops; do not set
TRITON_INTERPRET. With ROOT2 each root runs in its own process and a markdown comparison table is printed, with the
warps per SM the registers / shared memory allow on an H100.)

Variants: the ones the backbones launch on a CUDA device: forward, dQ, dK/dV (and the split dK/dV + its reduce for
routing), for MASK_INTERVAL (window / band / 1D NA, rows in memory order, rpb or not), MASK_GRID2D (2D NA, rows
permutation, rpb or not), MASK_ROUTE (rows permutation, no rpb, fp32 O: SPLIT_P), HEAD_DIM 32 / 64, bf16 (+ one fp16),
with sparse_ops.block_sparse_fwd.default_config's tiles for a CUDA device (routing: the 64 x 32 default and the
16 x 16 small-region one); where a kernel has the constexpr ``EXACT`` (the NaN exact pass, docs/design.md "NaN and
inf") each of those variants also as ``exact-...`` (the comparison lists variants only ROOT2 has after the others).
Argument specialisation follows Triton's launcher: pointers 16-byte aligned, unit strides specialised to the constant
1, other strides / N divisible by 16 unless the kernel names them in ``do_not_specialize``, other ints plain i32 (rpb
fp32: a model parameter).
Registers from the cubin (cuobjdump -res-usage), spills from `ptxas -v` on the same PTX, shared memory from Triton's
metadata (dynamic shared memory, what the launch requests). ``--config`` replaces the default tiles (not the
small-region ones) to see another config's cost.

Pipelining (``inflight``, ``sync_loads``), read from the TTGIR of the loop with the most dots (the key / query block
walk): ``inflight`` is the ``num`` of the loop's first ``ttg.async_wait``, the async-copy groups of later iterations
left in flight while this iteration's tile is consumed (0: the loop waits for every copy it issued, so the copy
latency is not hidden within the program, only by other programs on the SM); ``sync_loads`` counts the tensor loads
left synchronous in the loop (``tt.load``: their latency stalls the iteration that uses them, e.g. the rows of a
permutation that the next tile's addresses need; the forward's hand prefetch of gathered tiles also shows here, as
loads whose use is one iteration later, with no async wait: ``inflight`` -1). Triton's software pipeliner decides
both from ``num_stages`` and the chain of loads that feeds each tile's address. A reading of the schedule, not a
prediction of speed (more copies in flight cost registers and shared memory): time a change with
tools/benchmark_attention.py.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

os.environ.pop('TRITON_INTERPRET', None)
os.environ.setdefault('TRITON_CACHE_DIR', tempfile.mkdtemp(prefix='triton-cc-'))  # fresh: true compile times
os.environ.setdefault('TRITON_DEFAULT_FP_FUSION', '1')   # 3.6's default; silences 3.9's warning


def _bin(name):
    import triton
    return os.path.join(os.path.dirname(triton.__file__), 'backends', 'nvidia', 'bin', name)


def _ptxas():
    """The ptxas Triton itself uses for the cubin (3.9: the 'ptxas-blackwell' knob; older: 'ptxas')."""
    from triton import knobs
    tool = getattr(knobs.nvidia, 'ptxas_blackwell', None) or knobs.nvidia.ptxas
    return tool.path


def _resources(c):
    """(registers, spill_store_bytes, spill_load_bytes, stack_bytes) of a CompiledKernel."""
    with tempfile.TemporaryDirectory() as d:
        cubin, ptx = os.path.join(d, 'k.cubin'), os.path.join(d, 'k.ptx')
        open(cubin, 'wb').write(c.asm['cubin'])
        open(ptx, 'w').write(c.asm['ptx'])
        res = subprocess.run([_bin('cuobjdump'), '-res-usage', cubin], capture_output=True, text=True).stdout
        regs = int(re.search(r'REG:(\d+)', res).group(1))
        stack = int(re.search(r'STACK:(\d+)', res).group(1))
        arch = 'sm_90a' if '.target sm_90a' in c.asm['ptx'] else 'sm_90'
        v = subprocess.run([_ptxas(), f'-arch={arch}', '-v', ptx, '-o', os.devnull], capture_output=True,
                           text=True)
        out = v.stdout + v.stderr
        m = re.search(r'(\d+) bytes spill stores, (\d+) bytes spill loads', out)
        st, ld = (int(m.group(1)), int(m.group(2))) if m else (-1, -1)
        return regs, st, ld, stack


def _pipelining(ttgir):
    """(inflight, sync_loads) of the loop with the most dots (see the module docstring); (-1, -1) without one."""
    loops = ttgir.split('scf.for')[1:]
    if not loops:
        return -1, -1
    loop = max(loops, key=lambda x: x.count('dot'))
    m = re.search(r'ttg\.async_wait[^\n]*\{num = (\d+)', loop)
    return (int(m.group(1)) if m else -1), len(re.findall(r'= tt\.load [^\n]*: tensor<', loop))


def _sig(fn, ptr, ints_d, ones, floats, const, fp32_ptrs=(), i32_ptrs=()):
    """signature, constexprs, attrs for ASTSource: ``ptr`` the 16-bit pointer type; names in ``ones`` are the
    constant 1, in ``ints_d`` i32 divisible by 16, in ``floats`` fp32, in ``const`` constexprs; pointer names in
    ``fp32_ptrs`` / ``i32_ptrs`` get that type; other ints (and those in the kernel's ``do_not_specialize``) plain
    i32."""
    sig, cx, attrs = {}, {}, {}
    plain = set(getattr(fn, 'do_not_specialize', None) or ())
    for i, a in enumerate(fn.arg_names):
        if a in const:
            sig[a], cx[a] = 'constexpr', const[a]
        elif a in ones:
            sig[a], cx[a] = 'constexpr', 1
        elif a in floats:
            sig[a] = 'fp32'
        elif a.isupper() and a not in ('H', 'N'):
            sig[a] = '*fp32' if a in fp32_ptrs else '*i32' if a in i32_ptrs else ptr
            attrs[(i,)] = [['tt.divisibility', 16]]
        else:
            sig[a] = 'i32'
            if a in ints_d and a not in plain:
                attrs[(i,)] = [['tt.divisibility', 16]]
    return sig, cx, attrs


TABLES = {'KV_NUM', 'KV_IDX', 'Q_NUM', 'Q_IDX', 'QWIN', 'TOK', 'ROUTE', 'PERM', 'CK', 'CUM', 'SLOT', 'FLAG'}


def _passes(fn):
    """The ``EXACT`` values a kernel has: (False, True) where it has the NaN exact pass (docs/design.md, "NaN and
    inf"), else (False,) (an older checkout)."""
    return (False, True) if 'EXACT' in fn.arg_names else (False,)


def _tag(exact):
    return 'exact-' if exact else ''


def variants(fwd, bwd, cfg_default, cfg_small):
    """(name, fn, signature, constexprs, attrs, num_warps, num_stages) of every variant."""
    ptrt = {'bf16': '*bf16', 'fp16': '*fp16'}
    out = []
    cases = []   # (tag, mask, rpb, perm, split_p/o32, cfg)
    cases += [('interval', 1, True, False, False, cfg_default), ('interval', 1, False, False, False, cfg_default),
              ('grid2d', 2, True, True, False, cfg_default), ('grid2d', 2, False, True, False, cfg_default),
              ('route', 3, False, True, True, cfg_default), ('route16', 3, False, True, True, cfg_small)]
    for dt, dims in (('bf16', (32, 64)), ('fp16', (32,))):
        for d in dims:
            for tag, mask, rpb, perm, o32, cfg in cases:
                if dt == 'fp16' and tag not in ('interval', 'route'):
                    continue
                name = f'{tag}{"+rpb" if rpb else ""} D{d} {dt} {cfg}'
                base = dict(HEAD_DIM=d, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, MASK_MODE=mask, HAS_RPB=rpb,
                            HAS_PERM=perm)
                rp = ('RPB',) if rpb else ()
                ones = {a for a in fwd._block_sparse_fwd_kernel.arg_names + bwd._block_sparse_bwd_dq_kernel.arg_names
                        + bwd._block_sparse_bwd_dkdv_kernel.arg_names if re.fullmatch(r'stride_\w+k', a)}
                ints_d = {a for a in bwd._block_sparse_bwd_dkdv_kernel.arg_names
                          + bwd._block_sparse_bwd_dq_kernel.arg_names + fwd._block_sparse_fwd_kernel.arg_names
                          if a.startswith('stride_') or a == 'N'}
                ints_d -= {'stride_numz', 'stride_idxz', 'stride_ckz', 'stride_cumz', 'stride_rz', 'stride_rpbh',
                           'stride_drc'}
                ints_d.discard('N') if mask == 3 else None
                for exact in _passes(fwd._block_sparse_fwd_kernel):
                    f = fwd._block_sparse_fwd_kernel
                    s = _sig(f, ptrt[dt], ints_d, ones, {'qk_scale'}, dict(base, SPLIT_P=o32, HAS_O2=o32, EXACT=exact),
                             fp32_ptrs={'LSE'} | set(rp) | ({'O'} if o32 else set()), i32_ptrs=TABLES)
                    out.append((_tag(exact) + 'fwd ' + name, f, *s, cfg.num_warps, cfg.num_stages))
                for exact in _passes(bwd._block_sparse_bwd_dq_kernel):
                    f = bwd._block_sparse_bwd_dq_kernel
                    s = _sig(f, ptrt[dt], ints_d, ones, {'qk_scale', 'sm_scale'}, dict(base, EXACT=exact),
                             fp32_ptrs={'LSE', 'DELTA', 'DRPB'} | set(rp) | ({'O'} if o32 else set()),
                             i32_ptrs=TABLES)
                    out.append((_tag(exact) + 'dq ' + name, f, *s, cfg.num_warps, cfg.num_stages))
                f = bwd._block_sparse_bwd_dkdv_kernel
                for exact in _passes(f):
                    for split in ((False, True) if mask == 3 else (False,)):
                        s = _sig(f, ptrt[dt], ints_d, ones, {'qk_scale', 'sm_scale'},
                                 dict(base, SPLIT=split, EXACT=exact), fp32_ptrs={'LSE', 'DELTA', 'SCR'} | set(rp),
                                 i32_ptrs=TABLES)
                        out.append((_tag(exact) + ('dkdv-split ' if split else 'dkdv ') + name, f, *s,
                                    cfg.num_warps, cfg.num_stages))
                if mask == 3:
                    f = bwd._block_sparse_bwd_dkdv_reduce_kernel
                    s = _sig(f, ptrt[dt], ints_d, ones, {'sm_scale'},
                             dict(HEAD_DIM=d, BLOCK_N=cfg.block_n, HAS_PERM=perm), fp32_ptrs={'SCR'}, i32_ptrs=TABLES)
                    out.append(('dkdv-reduce ' + name, f, *s, cfg.num_warps, 1))
    return out


def _warps_per_sm(r, name):
    """Resident warps per H100 SM allowed by registers (64K, 256-register warp granules) and shared memory (228 KB,
    1 KB reserved per block); at most 64 warps / 32 blocks."""
    w = int(re.search(r'-w(\d+)-', name).group(1))
    by_regs = 65536 // (-(-r['regs'] * 32 // 256) * 256 * w)
    by_smem = 233472 // (r['shared'] + 1024) if r['shared'] else 32
    return min(by_regs, by_smem, 64 // w, 32) * w


def compare(root_a, root_b, only, config=''):
    """Run both roots (one process each) and print the comparison table."""
    res = []
    for root in (root_a, root_b):
        with tempfile.NamedTemporaryFile(suffix='.json') as f:
            subprocess.run([sys.executable, __file__, root, '--json', f.name, '--only', only]
                           + (['--config', config] if config else []), check=True, stdout=subprocess.DEVNULL)
            res.append({r['name']: r for r in json.load(open(f.name))})
    a, b = res
    desc = lambda r: (f"{r['regs']} / {r['spill_st']}+{r['spill_ld']} / {r['shared']} / "
                      f"{r.get('inflight', '?')}, {r.get('sync_loads', '?')}" if r['ok'] else
                      'FAILS: ' + r['error'].splitlines()[-1][:80])
    print(f'| variant | A={root_a}: regs / spill st+ld B / smem B / in flight, sync loads | B={root_b}: same | '
          f'warps/SM A -> B | compile s A/B | flag |')
    print('|---|---|---|---|---|---|')
    for n, ra in a.items():
        rb = b.get(n, dict(ok=False, error='missing', secs=0))
        flag, occ = [], ''
        if ra['ok'] and rb['ok']:
            occ = f'{_warps_per_sm(ra, n)} -> {_warps_per_sm(rb, n)}'
            if rb['spill_st'] + rb['spill_ld'] > 0 and ra['spill_st'] + ra['spill_ld'] == 0:
                flag.append('NEW SPILLS')
            if _warps_per_sm(rb, n) < _warps_per_sm(ra, n):
                flag.append('lower occupancy')
        elif ra['ok']:
            flag.append('B FAILS')
        print(f"| {n} | {desc(ra)} | {desc(rb)} | {occ} | {ra['secs']}/{rb['secs']} | {', '.join(flag)} |")
    for n, rb in b.items():   # variants only B has (e.g. the exact NaN pass)
        if n not in a:
            occ = _warps_per_sm(rb, n) if rb['ok'] else ''
            print(f"| {n} | - | {desc(rb)} | - -> {occ} | -/{rb['secs']} | only B |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('root')
    ap.add_argument('root2', nargs='?')
    ap.add_argument('--json')
    ap.add_argument('--only', default='')
    ap.add_argument('--config', default='', help='BM,BN,W,S instead of the default tiles')
    a = ap.parse_args()
    if a.root2:
        return compare(a.root, a.root2, a.only, a.config)
    sys.path.insert(0, os.path.abspath(a.root))
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from sparse_ops import block_sparse_bwd as bwd, block_sparse_fwd as fwd
    assert fwd.__file__.startswith(os.path.abspath(a.root)), fwd.__file__
    cuda = torch.device('cuda')
    cfg_default = fwd.Config(*map(int, a.config.split(','))) if a.config else fwd.default_config(64, cuda, 1)
    cfg_small = fwd.default_config(64, cuda, 3, region_tokens=fwd.SMALL_REGION_TOKENS)
    print(f'# root={a.root} triton={triton.__version__} default={cfg_default} small-region={cfg_small}', flush=True)
    rows = []
    for name, fn, sig, cx, attrs, w, st in variants(fwd, bwd, cfg_default, cfg_small):
        if a.only not in name:
            continue
        t = time.time()
        try:
            c = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=cx, attrs=attrs),
                               target=GPUTarget('cuda', 90, 32), options={'num_warps': w, 'num_stages': st})
            dt = time.time() - t
            regs, sst, sld, stack = _resources(c)
            inflight, sync_loads = _pipelining(c.asm['ttgir'])
            r = dict(name=name, ok=True, regs=regs, spill_st=sst, spill_ld=sld, stack=stack,
                     shared=c.metadata.shared, inflight=inflight, sync_loads=sync_loads, secs=round(dt, 1))
        except Exception as e:   # noqa: BLE001 - reported
            r = dict(name=name, ok=False, error=f'{type(e).__name__}: {str(e)[-600:]}', secs=round(time.time() - t, 1))
        rows.append(r)
        print(json.dumps(r), flush=True)
    if a.json:
        json.dump(rows, open(a.json, 'w'), indent=1)


if __name__ == '__main__':
    main()
