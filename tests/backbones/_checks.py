"""Checks shared by the backbone tests (imported as a sibling module: tests/ has no packages)."""
import torch

import sparse_ops
from backbones.layers.linear import cast_linear_weights


def run_block(block, x, backend, dtype, device_type, *args):
    """``block(x, *args)`` under ``sparse_ops.use_backend(backend)`` and autocast to ``dtype`` (None: fp32) with the
    pre-cast weights, then ``sum(out * g)`` backpropagated for a fixed random g: ``(out detached, dx, {name: grad},
    out)``. The RNG is seeded before the forward (same stochastic-depth masks on both paths); g has its own
    generator."""
    x = x.clone().requires_grad_(True)
    torch.manual_seed(5)
    with sparse_ops.use_backend(backend), \
            torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None), \
            cast_linear_weights(block):
        out = block(x, *args)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(9)).to(out.device)
    (out.float() * g).sum().backward()
    grads = {n: p.grad.clone() for n, p in block.named_parameters() if p.grad is not None}
    return out.detach(), x.grad, grads, out


def assert_checkpointed_equals_plain(plain, cp, x):
    """``cp`` (with_cp=True, plain's weights loaded) gives the same outputs and parameter gradients as ``plain``."""
    out_plain, out_cp = plain(x), cp(x)
    torch.testing.assert_close(out_cp, out_plain)
    sum(o.sum() for o in out_plain).backward()
    sum(o.sum() for o in out_cp).backward()
    for (name, p1), p2 in zip(plain.named_parameters(), cp.parameters()):
        torch.testing.assert_close(p2.grad, p1.grad, msg=name)


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """``max |a - ref| / max |ref|`` in float64."""
    return ((a.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30)).item()


def assert_within_twin_error(got, twin, ref, floor: float) -> None:
    """``got``, ``twin``, ``ref``: ``(out, dx, {name: grad}, ...)`` of the fused path, the twin in the same low
    precision and a high-precision reference. Every error of ``got`` against ``ref`` (output, dx, each parameter
    gradient of ``ref``) is at most twice the twin's + ``floor``."""
    pairs = [('out', got[0], twin[0], ref[0]), ('dx', got[1], twin[1], ref[1])]
    pairs += [(name, got[2][name], twin[2][name], ref[2][name]) for name in ref[2]]
    for name, g, t, r in pairs:
        err, err_twin = rel_err(g, r), rel_err(t, r)
        assert err <= 2 * err_twin + floor, f'{name}: fused {err:.2e} vs twin {err_twin:.2e}'


def assert_equals_twin(got, want, names, tol: float) -> None:
    """``got``, ``want``: ``(out, dx, {name: grad}, ...)`` of the fused path and the twin. Output, dx and the
    gradient of every parameter in ``names`` (all of them, no other) within ``tol`` of the twin's (``rel_err``)."""
    assert rel_err(got[0], want[0]) < tol and rel_err(got[1], want[1]) < tol
    assert set(got[2]) == set(want[2]) == set(names)
    for name in got[2]:
        assert rel_err(got[2][name], want[2][name]) < tol, name
