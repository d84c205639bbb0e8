"""``sparse_ops.backend.why_not_triton``: the one predicate that says why the Triton kernels cannot run, one case per
reason, and the public functions (attention, ``qkv_attention``, ``layer_norm``, ``depthwise_conv2d``) raising that
reason when ``backend='triton'`` is forced."""
from __future__ import annotations

import pytest
import torch

import sparse_ops
from sparse_ops import backend

F32 = torch.float32


def _q(*shape, dtype=F32, device='cpu'):
    """A q-like tensor without memory (the predicate reads only shape, dtype, device, strides)."""
    return torch.empty((), dtype=dtype, device=device).expand(*shape)


@pytest.fixture
def interpret(monkeypatch):
    monkeypatch.setenv('TRITON_INTERPRET', '1')
    monkeypatch.setattr(backend, 'TRITON_MISSING', None)


# (name, call -> reason or None, a fragment of the reason)
REASONS = [
    ('unknown op', lambda: backend.why_not_triton(_q(1, 2, 8, 16), 'conv3d'), "unknown op 'conv3d'"),
    ('device', lambda: backend.why_not_triton(_q(1, 2, 8, 16, device='meta'), 'window'), 'device=meta'),
    ('bf16 in the interpreter', lambda: backend.why_not_triton(_q(1, 2, 8, 16, dtype=torch.bfloat16), 'window'),
     'bf16 is unreliable in the Triton interpreter'),
    ('dtype', lambda: backend.why_not_triton(_q(1, 2, 8, 16, dtype=torch.float64), 'slide'), 'dtype=torch.float64'),
    ('head dim', lambda: backend.why_not_triton(_q(1, 2, 8, 24), 'na1d'), 'head_dim=24'),
    ('dims of q', lambda: backend.why_not_triton(_q(1, 2, 8, 16), 'na2d'), "pattern 'na2d' needs 5-d q"),
    ('batch * heads', lambda: backend.why_not_triton(_q(65536, 1, 8, 16), 'window'), 'bh=65536'),
    ('rpb', lambda: backend.why_not_triton(_q(1, 2, 8, 16), 'window', rpb=torch.zeros(3, 5, 5)),
     'rpb must be (heads, 2r-1, 2r-1)'),
    ('dwconv span', lambda: backend.why_not_triton(_q(1, 65536, 32768, 1), 'depthwise_conv2d'),
     'one image must span < 2**31 elements'),
]


@pytest.mark.parametrize('name,call,fragment', REASONS, ids=[r[0] for r in REASONS])
def test_each_reason(interpret, name, call, fragment):
    reason = call()
    assert reason is not None and fragment in reason


def test_no_interpreter_on_cpu(monkeypatch):
    monkeypatch.setattr(backend, 'TRITON_MISSING', None)
    monkeypatch.setenv('TRITON_INTERPRET', '0')
    for op in ('window', 'layer_norm', 'depthwise_conv2d', 'routing_tables'):
        assert 'CPU tensors need TRITON_INTERPRET=1' in backend.why_not_triton(_q(1, 4, 4, 16), op)


def test_triton_missing_is_the_first_reason(monkeypatch):
    """Without triton (``TRITON_MISSING`` set by the guarded import) every op gives that reason, and every public
    function forced to 'triton' raises it; backend None takes the twin."""
    monkeypatch.setenv('TRITON_INTERPRET', '1')
    monkeypatch.setattr(backend, 'TRITON_MISSING', 'triton does not import (test)')
    x = torch.randn(1, 2, 4, 4, 16)
    for op in backend.ATTENTION_PATTERNS + backend.KERNEL_OPS:
        assert backend.why_not_triton(x if op in ('na2d', 'routing') else x[:, :, 0], op) == \
            'triton does not import (test)'
    calls = [
        lambda b: sparse_ops.hilbert_window_attention(*(x[:, :, 0],) * 3, 4, backend=b),
        lambda b: sparse_ops.neighborhood_attention_2d(x, x, x, 3, backend=b),
        lambda b: sparse_ops.qkv_attention(torch.randn(1, 4, 4, 96), 2, 'routing', 2, 1, backend=b),
        lambda b: sparse_ops.layer_norm(x, backend=b),
        lambda b: sparse_ops.depthwise_conv2d(x[0], torch.randn(16, 1, 3, 3), backend=b),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=r'cannot run: triton does not import \(test\)'):
            call('triton')
        assert isinstance(call(None), torch.Tensor)           # the twin


def test_runnable_inputs_have_no_reason(interpret):
    assert backend.why_not_triton(_q(2, 2, 8, 16), 'window', rpb=torch.zeros(2, 5, 5), hw=(2, 4)) is None
    assert backend.why_not_triton(_q(2, 2, 4, 4, 32, dtype=torch.float16), 'routing', n_win=2, topk=1) is None
    assert backend.why_not_triton(_q(2, 8, 8, 3, dtype=torch.bfloat16), 'layer_norm') is None
    assert backend.why_not_triton(_q(2, 8, 8, 3), 'depthwise_conv2d', residual=_q(2, 8, 8, 3)) is None


def test_imports_and_runs_the_twins_without_triton(tmp_path):
    """A fresh process where ``import triton`` fails: ``sparse_ops`` imports (the one guarded import records why),
    the Triton modules are None and the public functions run the twins."""
    import os
    import subprocess
    import sys
    script = '''
import sys, importlib.abc
class NoTriton(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] == 'triton':
            raise ImportError('no triton here')
sys.meta_path.insert(0, NoTriton())
import torch, sparse_ops
from sparse_ops import backend, kernels
assert backend.TRITON_MISSING == 'triton does not import (ImportError: no triton here)', backend.TRITON_MISSING
assert kernels.triton_api is None and kernels.norm_triton is None
q = torch.randn(1, 2, 16, 16)
assert sparse_ops.hilbert_window_attention(q, q, q, 4, backend=None).shape == q.shape
assert sparse_ops.qkv_attention(torch.randn(1, 4, 4, 96), 2, 'routing', 2, 1).shape == (1, 4, 4, 32)
print('ok')
'''
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get('PYTHONPATH', ''), TRITON_INTERPRET='1')
    done = subprocess.run([sys.executable, '-c', script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == 'ok', done.stderr[-2000:]


def test_compiled_code_follows_the_use_backend_default():
    """Dynamo cannot read the context variable (a graph break per call); compiled code sees the same default
    through a global that it guards on, so a change of the default recompiles instead of reusing the old branch."""
    import torch._dynamo.testing as dt
    counter = dt.CompileCounter()
    step = {None: 1.0, 'torch': 2.0, 'triton': 3.0}

    def f(x):
        return x + step[backend.requested_backend(None, 'window')]

    f = torch.compile(f, backend=counter, fullgraph=True)
    x = torch.zeros(2)
    seen = [f(x)[0].item()]
    with sparse_ops.use_backend('torch'):
        seen.append(f(x)[0].item())
        with sparse_ops.use_backend('triton'):
            seen.append(f(x)[0].item())
        seen.append(f(x)[0].item())
    seen.append(f(x)[0].item())
    assert seen == [1.0, 2.0, 3.0, 2.0, 1.0]
    assert counter.frame_count == 3            # one graph per value, each reused
    assert backend.requested_backend('torch', 'window') == 'torch'
