import sys, types, time, torch
from torch import nn
class DropPath(nn.Module):
    def __init__(s, drop_prob=0.1): super().__init__(); s.drop_prob = drop_prob
    def forward(s, x): return x
for n in ('mmcv', 'mmcv.cnn', 'mmcv.cnn.bricks'): sys.modules[n] = types.ModuleType(n)
sys.modules['mmcv.cnn.bricks'].DropPath = DropPath
pkg = types.ModuleType('backbones'); pkg.__path__ = ['backbones']; sys.modules['backbones'] = pkg
import sparse_ops, backbones.hwt as H
from functools import partial
orig = sparse_ops.hilbert_window_attention
torch.backends.cuda.matmul.allow_tf32 = False
torch.manual_seed(0)
m = H.HWT(arch='tiny', drop_path_rate=0.0).cuda(); m.init_weights()
def run(backend, x, dtype=None):
    sparse_ops.hilbert_window_attention = partial(orig, backend=backend)
    m.zero_grad()
    with torch.autocast('cuda', dtype=dtype or torch.float32, enabled=dtype is not None):
        outs = m(x)
    sum((o.float() ** 2).mean() for o in outs).backward()
    return [o.detach().float() for o in outs], [p.grad.detach().clone() for p in m.parameters()]
def err(a, b): return max(((x - y).abs().max() / y.abs().max().clamp_min(1e-12)).item() for x, y in zip(a, b))
for hw in [(224, 224), (511, 613), (800, 1333)]:
    x = torch.randn(2, 3, *hw, device='cuda')
    ref = run('torch', x); tri = run('triton', x)
    t16 = run('torch', x, torch.bfloat16); b16 = run('triton', x, torch.bfloat16)
    print(hw, 'fp32 triton vs twin: out %.2e grad %.2e | bf16 vs fp32 twin: triton out %.2e grad %.2e, twin out %.2e grad %.2e' % (
        err(tri[0], ref[0]), err(tri[1], ref[1]), err(b16[0], ref[0]), err(b16[1], ref[1]), err(t16[0], ref[0]), err(t16[1], ref[1])), flush=True)
x = torch.randn(2, 3, 1024, 1024, device='cuda')
for backend in ('triton', 'torch'):
    for _ in range(2): run(backend, x, torch.bfloat16)
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); t = time.time()
    for _ in range(5): run(backend, x, torch.bfloat16)
    torch.cuda.synchronize()
    print(f'HWT-T 2x1024^2 bf16 fwd+bwd {backend}: {(time.time()-t)/5*1e3:.1f} ms, peak {torch.cuda.max_memory_allocated()/2**30:.2f} GiB', flush=True)
