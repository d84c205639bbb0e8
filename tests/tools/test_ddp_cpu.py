"""Multi-process data-parallel training on CPU (issue 24, what the CPUs allow): 2 gloo processes, world size 2.

mmengine's ``init_dist`` always calls ``torch.cuda.set_device``, so ``tools/dist_train.sh`` cannot run here; this
module starts the two ranks itself (``subprocess``, this file as the worker script: ``python test_ddp_cpu.py JOB
OUT_DIR`` with ``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` / ``MASTER_PORT`` set by the launcher, a free localhost
port, ``init_process_group('gloo', timeout=...)``), kills both when one fails or the wall-clock limit passes, and
checks what each rank saved (``OUT_DIR/rank{r}.pt``) here, in the pytest process.

The reference is exact: DDP's gradient is the mean over ranks of each rank's gradient of its own loss,
``g = 1/W sum_r grad L_r(theta)``, so every rank also computes ``grad L_r(theta)`` WITHOUT DDP (a deep copy of the
module taken before wrapping, loaded with the DDP module's current weights, the same data and the same RNG seed,
so stochastic depth and mmdet's proposal samplers draw the same), and the test averages the two ranks' reference
gradients in fp64. A single process on the concatenated batch would not be exact: mmdet normalises its losses per
rank (avg_factor = the rank's own sampled anchors / RoIs), so the full-batch loss is not the mean of the two
half-batch losses.

- Detector: the demo HWT Mask R-CNN (``configs/demo/mask-rcnn_hwt-demo_fpn_shapes-coco.py``) wrapped as mmengine's
  runner wraps it (``MMDistributedDataParallel``, ``broadcast_buffers=False``, ``find_unused_parameters=False``; no
  ``device_ids`` on CPU), the config's optimizer wrapper (AdamW, paramwise decay, grad clipping) built with
  ``build_optim_wrapper``, 3 ``train_step`` calls on synthetic batches (``tools/benchmark.synthetic_batch``). Each
  rank initialises with its own seed: DDP's construction broadcast must make rank 1 start from rank 0's weights.
- Backbones: HWT, BiFormer, NAT, DiNAT (tiny archs, stochastic depth 0.3) in ``torch.nn.parallel.
  DistributedDataParallel`` with ``find_unused_parameters`` False and True, on the twin path and on the Triton fused
  path (``sparse_ops.use_backend('triton')``: the fused autograd Functions with their hand-written backward, the
  kernels interpreted under ``TRITON_INTERPRET=1``). Step 0 is one micro-batch; step 1 accumulates two, the first
  under ``no_sync()``. HWT also under fp16 autocast (the backbone's one-node weight cast, ``cast_linear_weights``).
  CUDA graph replay (``backbones/graphs.py``) is CUDA-only and off here.

Runtime (2 cores): the default tests take about 25 s (two launches: detector, and the twin cases plus fused HWT);
the fused detector (64 px) and the fused HWT-fp16 / BiFormer / NAT / DiNAT cases (the interpreter costs 1-10 s per
step) are ``slow`` (about 60 s and 90 s).
"""
from __future__ import annotations

import contextlib
import copy
import datetime
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[2]
WORLD = 2
DET_STEPS = 3
# fp32 rounding: the reference mean is formed in fp64; DDP divides each rank's gradient by the world size and sums
GRAD_TOL = 1e-6
FUSED_NODES = ('FusedWindowBlockBackward', 'FusedRoutingBlockBackward', 'FusedNeighborhoodBlockBackward')

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason='torch.distributed with the gloo backend is not available')


# ------------------------------------------------------------------------------------------------- worker side
def _seed(*key: int) -> None:
    """The same RNG state for the DDP run and the reference of one (step, micro-batch, rank)."""
    seed = 1000 + sum(k * 10 ** i for i, k in enumerate(reversed(key)))
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def _grads(module: torch.nn.Module) -> dict:
    return {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


def _fused_nodes(outs) -> set:
    """Names of the fused block nodes in the autograd graph behind ``outs``."""
    seen, found, stack = set(), set(), [o.grad_fn for o in outs if o.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ in FUSED_NODES:
            found.add(type(node).__name__)
        stack.extend(f for f, _ in node.next_functions)
    return found


def _detector_job(rank: int, backend: str, size: int) -> dict:
    """DET_STEPS ``train_step`` calls of the runner-wrapped demo Mask R-CNN, 2 images per rank; each step first
    computes the rank's reference gradient without DDP at the current weights."""
    import sparse_ops
    from conftest import DET_CFG, load_tool
    from mmengine.config import Config
    from mmengine.model import MMDistributedDataParallel
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    import backbones  # noqa: F401  (the config's custom_imports: registers HWT)

    bench = load_tool('benchmark')
    register_all_modules()
    init_default_scope('mmdet')
    cfg = Config.fromfile(str(DET_CFG))
    torch.manual_seed(rank)                     # different inits: DDP's construction broadcast must unify them
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.train()
    ref = copy.deepcopy(model)
    ddp = MMDistributedDataParallel(module=model, broadcast_buffers=False, find_unused_parameters=False)
    optim_wrapper = build_optim_wrapper(ddp, cfg.optim_wrapper)
    ddp_grads = []
    step = optim_wrapper.step

    def recording_step(**kwargs):               # after backward (DDP's all-reduce done), before clipping
        ddp_grads.append(_grads(ddp.module))
        step(**kwargs)

    optim_wrapper.step = recording_step
    out = dict(init=copy.deepcopy(ddp.module.state_dict()), ref_grads=[], losses=[], fused=set(),
               trainable=[n for n, p in model.named_parameters() if p.requires_grad])

    def batch(i):
        return bench.synthetic_batch('mmdet', 2, size, size, cfg.num_classes, True, seed=100 * i + rank)

    for i in range(DET_STEPS):
        ref.load_state_dict(ddp.module.state_dict())
        ref.zero_grad(set_to_none=True)
        _seed(i, rank)
        with sparse_ops.use_backend(backend):
            losses = ref(**ref.data_preprocessor(batch(i), True), mode='loss')
        loss, _ = ref.parse_losses(losses)
        out['fused'] |= _fused_nodes([loss])
        loss.backward()
        out['ref_grads'].append(_grads(ref))
        _seed(i, rank)
        with sparse_ops.use_backend(backend):
            log_vars = ddp.train_step(batch(i), optim_wrapper)
        out['losses'].append({k: float(v) for k, v in log_vars.items()})
    out['ddp_grads'] = ddp_grads
    out['final'] = copy.deepcopy(ddp.module.state_dict())
    return out


def _backbone(name: str) -> torch.nn.Module:
    """Tiny archs (head dims 16 / 32: the Triton core's sizes), stochastic depth on, no graph replay."""
    from backbones import HWT, BiFormer, DiNAT, NAT
    common = dict(drop_path_rate=0.3, cuda_graphs=False)
    nat = dict(depths=(1, 1, 1, 1), embed_dims=16, num_heads=(1, 1, 2, 2), mlp_ratio=2.0, kernel_size=3)
    if name == 'HWT':
        return HWT(arch=dict(embed_dims=16, depths=(1, 1), num_heads=(1, 1), window_size=3, mlp_ratio=2.0),
                   out_indices=(0, 1), **common)
    if name == 'BiFormer':
        return BiFormer(arch=dict(depths=[1, 1, 1, 1], embed_dims=[16, 32, 32, 32], head_dim=16, global_heads=2,
                                  mlp_ratio=2), n_win=2, topks=(1, 2, 'global', 'global'), **common)
    if name == 'NAT':
        return NAT(arch=nat, **common)
    if name == 'DiNAT':
        return DiNAT(arch=dict(nat, layer_scale=0.5), dilations=((2, ), (1, ), (1, ), (1, )), **common)
    raise ValueError(f'unknown backbone {name!r}')


def _backbone_loss(model, rank: int, step: int, micro: int, backend: str, amp: bool, fused: set) -> torch.Tensor:
    """A fixed weighted sum of the outputs on the rank's own (2, 3, 32, 32) batch; ``amp``: under fp16 autocast
    (the backbone casts its Linear weights in one autograd node, ``layers.linear.cast_linear_weights``)."""
    import sparse_ops
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(100 * step + 10 * micro + rank))
    _seed(step, micro, rank)
    with sparse_ops.use_backend(backend), torch.autocast('cpu', dtype=torch.float16, enabled=amp):
        outs = model(x)
    fused |= _fused_nodes(outs)
    return sum((o.float() * torch.linspace(-1, 1, o.numel()).view(o.shape)).sum() for o in outs)


def _backbone_case(rank: int, name: str, backend: str, amp: bool, find_unused: bool) -> dict:
    """Step 0: one micro-batch; step 1: two, the first under ``no_sync()``; SGD after each. Per step: the rank's
    reference gradient (no DDP, same weights, data and seeds, micro-batches accumulated), DDP's gradient and the
    weights after the step."""
    from torch.nn.parallel import DistributedDataParallel
    torch.manual_seed(0)
    model = _backbone(name).train()
    ref = copy.deepcopy(model)
    ddp = DistributedDataParallel(model, find_unused_parameters=find_unused)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    out = dict(ref_grads=[], ddp_grads=[], params=[], fused_ref=set(), fused=set(),
               trainable=[n for n, p in model.named_parameters() if p.requires_grad])
    for step, micros in enumerate((1, 2)):
        ref.load_state_dict(ddp.module.state_dict())
        ref.zero_grad(set_to_none=True)
        for m in range(micros):
            _backbone_loss(ref, rank, step, m, backend, amp, out['fused_ref']).backward()
        out['ref_grads'].append(_grads(ref))
        for m in range(micros):
            with ddp.no_sync() if m < micros - 1 else contextlib.nullcontext():
                _backbone_loss(ddp, rank, step, m, backend, amp, out['fused']).backward()
        out['ddp_grads'].append(_grads(ddp.module))
        opt.step()
        opt.zero_grad(set_to_none=True)
        out['params'].append({n: p.detach().clone() for n, p in ddp.module.named_parameters()})
    return out


def _backbones_job(rank: int, cases: list[str]) -> dict:
    """``cases``: ``'NAME-BACKEND'`` or ``'NAME-BACKEND-fp16'``; each runs with ``find_unused_parameters`` False
    and True."""
    out = {}
    for case in cases:
        name, backend, *amp = case.split('-')
        for find_unused in (False, True):
            out[f'{case}-unused{int(find_unused)}'] = _backbone_case(rank, name, backend, bool(amp), find_unused)
    return out


def _worker_main(job: str, out_dir: Path) -> None:
    for path in (REPO, Path(__file__).parent):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    rank = int(os.environ['RANK'])
    torch.set_num_threads(1)
    dist.init_process_group('gloo', rank=rank, world_size=int(os.environ['WORLD_SIZE']),
                            timeout=datetime.timedelta(seconds=120))
    try:
        kind, _, arg = job.partition(':')
        if kind == 'detector':
            result = _detector_job(rank, arg, 128 if arg == 'torch' else 64)
        else:
            result = _backbones_job(rank, arg.split(','))
        torch.save(result, out_dir / f'rank{rank}.pt')
        dist.barrier()
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------- launcher
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def launch(job: str, out_dir: Path, timeout: float) -> list[dict]:
    """Run ``job`` on WORLD ranks (this file as the worker script); both are killed when one exits non-zero or
    ``timeout`` seconds pass. Returns each rank's saved result."""
    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TRITON_INTERPRET='1', OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1',
               MASTER_ADDR='127.0.0.1', MASTER_PORT=str(_free_port()), WORLD_SIZE=str(WORLD))
    logs = [out_dir / f'rank{r}.log' for r in range(WORLD)]
    procs = []
    for r in range(WORLD):
        with open(logs[r], 'w') as log:
            procs.append(subprocess.Popen([sys.executable, __file__, job, str(out_dir)], cwd=REPO, stdout=log,
                                          stderr=subprocess.STDOUT, env=dict(env, RANK=str(r), LOCAL_RANK=str(r))))
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if any(p.returncode not in (None, 0) for p in procs):
                break
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    if any(p.returncode != 0 for p in procs):
        tails = '\n'.join(f'--- rank {r} (exit {p.returncode}) ---\n' + logs[r].read_text()[-3000:]
                          for r, p in enumerate(procs))
        pytest.fail(f'{job}: a rank failed or ran past {timeout} s (killed)\n{tails}')
    return [torch.load(out_dir / f'rank{r}.pt') for r in range(WORLD)]


# ------------------------------------------------------------------------------------------------- checks
def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-12)).item()


def assert_ddp_grads_exact(ddp: list[dict], refs: list[dict], trainable: list[str], what: str) -> None:
    """Both ranks hold the same gradient (bit for bit), every trainable parameter has one, and it is the fp64 mean
    of the ranks' reference gradients to fp32 rounding (relative to the tensor's largest entry)."""
    assert ddp[0].keys() == ddp[1].keys() == refs[0].keys() == refs[1].keys() == set(trainable), \
        f'{what}: parameters with a gradient differ: ' \
        f'{sorted(set(trainable) ^ ddp[0].keys())} / {sorted(set(trainable) ^ refs[0].keys())}'
    for name in trainable:
        same = torch.equal(ddp[0][name], ddp[1][name])
        assert same, f'{what}: {name} gradient differs between ranks'
        want = (refs[0][name].double() + refs[1][name].double()) / WORLD
        err = _rel_err(ddp[0][name], want)
        assert err <= GRAD_TOL, f'{what}: {name} DDP gradient vs mean of the ranks\' own: rel err {err:.2e}'
    # the ranks' own gradients differ: the all-reduce is not vacuous
    differ = any(not torch.equal(refs[0][n], refs[1][n]) for n in trainable)
    assert differ, f'{what}: the ranks computed the same gradients (the all-reduce would be vacuous)'


def assert_same_tensors(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys()
    diff = [n for n in a if not torch.equal(a[n], b[n])]
    assert not diff, f'{what}: differ between ranks: {diff[:5]}'


def check_detector(res: list[dict], fused: bool) -> None:
    for r, rank_res in enumerate(res):
        for i, losses in enumerate(rank_res['losses']):
            assert all(np.isfinite(v) for v in losses.values()), f'rank {r} step {i}: {losses}'
        assert bool(rank_res['fused']) == fused, rank_res['fused']
    assert_same_tensors(res[0]['init'], res[1]['init'], 'weights after DDP construction (ranks seeded apart)')
    for i in range(DET_STEPS):
        assert_ddp_grads_exact([r['ddp_grads'][i] for r in res], [r['ref_grads'][i] for r in res],
                               res[0]['trainable'], f'step {i}')
    assert_same_tensors(res[0]['final'], res[1]['final'], f'weights and buffers after {DET_STEPS} steps')
    trained = any(not torch.equal(res[0]['init'][n], res[0]['final'][n]) for n in res[0]['trainable'])
    assert trained, 'no weight changed'


DEFAULT_CASES = ['HWT-torch', 'HWT-triton', 'HWT-torch-fp16', 'BiFormer-torch', 'NAT-torch', 'DiNAT-torch']
SLOW_CASES = ['HWT-triton-fp16', 'BiFormer-triton', 'NAT-triton', 'DiNAT-triton']


@pytest.fixture(scope='module')
def backbone_runs(tmp_path_factory):
    """One launch per group of cases (each launch pays ~4 s of imports per rank), made on first use; a failed
    launch fails every test of its group with the ranks' logs, without launching again."""
    runs = {}

    def get(cases: list[str]) -> list[dict]:
        key = ','.join(cases)
        if key not in runs:
            try:
                runs[key] = launch(f'backbones:{key}', tmp_path_factory.mktemp('ddp_backbones'), timeout=300)
            except pytest.fail.Exception as err:
                runs[key] = err
        if isinstance(runs[key], BaseException):
            pytest.fail(str(runs[key]), pytrace=False)
        return runs[key]
    return get


def test_detector_runner_wrapped_train_steps(tmp_path):
    """The demo Mask R-CNN, runner-wrapped, twin path, 128 px: DDP's construction unifies differently seeded
    weights; at each of 3 ``train_step`` calls the all-reduced gradient is the mean of the ranks' own; losses
    finite; weights and buffers bit-identical across ranks after the steps."""
    check_detector(launch('detector:torch', tmp_path, timeout=240), fused=False)


@pytest.mark.slow
def test_detector_runner_wrapped_train_steps_fused(tmp_path):
    """As above on the fused path (every HWT block a fused node with its hand-written backward), 64 px."""
    check_detector(launch('detector:triton', tmp_path, timeout=600), fused=True)


@pytest.mark.parametrize('case', DEFAULT_CASES + [pytest.param(c, marks=pytest.mark.slow) for c in SLOW_CASES])
@pytest.mark.parametrize('find_unused', [False, True], ids=['used', 'find-unused'])
def test_backbone_ddp_grads_equal_rank_mean(backbone_runs, case, find_unused):
    """A tiny backbone in torch DDP, stochastic depth on: on the fused path every block is a fused node; at step 0
    (one micro-batch) and step 1 (two, the first under ``no_sync()``) every trainable parameter gets a gradient, the
    same on both ranks, equal to the mean of the ranks' own accumulated gradients; weights equal after each SGD
    step."""
    runs = backbone_runs(SLOW_CASES if case in SLOW_CASES else DEFAULT_CASES)
    res = [r[f'{case}-unused{int(find_unused)}'] for r in runs]
    fused = '-triton' in case
    for r in res:
        assert bool(r['fused']) == bool(r['fused_ref']) == fused, (r['fused'], r['fused_ref'])
    for step in range(2):
        assert_ddp_grads_exact([r['ddp_grads'][step] for r in res], [r['ref_grads'][step] for r in res],
                               res[0]['trainable'], f'{case} step {step}')
        assert_same_tensors(res[0]['params'][step], res[1]['params'][step], f'{case}: weights after step {step}')


if __name__ == '__main__':
    _worker_main(sys.argv[1], Path(sys.argv[2]))
