"""Checks shared by the backbone tests (imported as a sibling module: tests/ has no packages)."""
import torch


def assert_checkpointed_equals_plain(plain, cp, x):
    """``cp`` (with_cp=True, plain's weights loaded) gives the same outputs and parameter gradients as ``plain``."""
    out_plain, out_cp = plain(x), cp(x)
    torch.testing.assert_close(out_cp, out_plain)
    sum(o.sum() for o in out_plain).backward()
    sum(o.sum() for o in out_cp).backward()
    for (name, p1), p2 in zip(plain.named_parameters(), cp.parameters()):
        torch.testing.assert_close(p2.grad, p1.grad, msg=name)
