"""Mixed precision on or off for tools/train.py, whatever the config's optim_wrapper says.

mmengine 0.10.7's ``AmpOptimWrapper`` asserts a GPU (CUDA / NPU / MLU / MUSA) at construction, and its own keyword
arguments (``loss_scale``, ``dtype``, ``use_fsdp``) are unknown to the plain ``OptimWrapper``, so changing only
``optim_wrapper.type`` fails. ``set_amp`` switches the wrapper type and adds or drops those keys together:

- ``--amp``: ``OptimWrapper`` -> ``AmpOptimWrapper`` (``loss_scale='dynamic'``); an error without an accelerator;
- ``--no-amp``: ``AmpOptimWrapper`` -> ``OptimWrapper`` (fp32 training);
- neither: an AMP config on a machine without an accelerator trains in fp32, with a one-line notice;
- a plain ``OptimWrapper`` that still carries AMP-only keys (an AMP config with only its type changed) loses them.
"""
from __future__ import annotations

AMP_ONLY_KEYS = ('loss_scale', 'dtype', 'use_fsdp')  # AmpOptimWrapper.__init__'s own keywords
AMP_TYPES = ('AmpOptimWrapper', 'mmengine.AmpOptimWrapper')
PLAIN_TYPES = ('OptimWrapper', 'mmengine.OptimWrapper')


def has_accelerator() -> bool:
    """The devices mmengine's AmpOptimWrapper accepts."""
    from mmengine.device import is_cuda_available, is_mlu_available, is_musa_available, is_npu_available
    return is_cuda_available() or is_npu_available() or is_mlu_available() or is_musa_available()


def _is_amp(wrapper: dict) -> bool:
    t = wrapper.get('type', 'OptimWrapper')
    if isinstance(t, str):
        return t in AMP_TYPES
    from mmengine.optim import AmpOptimWrapper
    return isinstance(t, type) and issubclass(t, AmpOptimWrapper)


def set_amp(cfg, amp: bool, no_amp: bool, accelerator: bool | None = None) -> str | None:
    """Set ``cfg.optim_wrapper`` to AMP or plain as asked (see the module docstring); returns a notice to print
    or None. Raises ValueError when AMP is asked for on a machine without an accelerator or for a wrapper type
    that is neither mmengine's plain nor its AMP wrapper."""
    if amp and no_amp:
        raise ValueError('--amp and --no-amp exclude each other')
    accelerator = has_accelerator() if accelerator is None else accelerator
    wrapper = cfg.get('optim_wrapper')
    if not isinstance(wrapper, dict):
        return None
    is_amp = _is_amp(wrapper)
    if amp:
        if not accelerator:
            raise ValueError('--amp needs a CUDA device (mmengine AmpOptimWrapper); none is available')
        if not is_amp:
            if wrapper.get('type', 'OptimWrapper') not in PLAIN_TYPES:
                raise ValueError(f"--amp: optim_wrapper.type is {wrapper.get('type')!r}, not OptimWrapper")
            wrapper['type'] = 'AmpOptimWrapper'
            wrapper.setdefault('loss_scale', 'dynamic')
        return None
    if not is_amp:  # e.g. --cfg-options optim_wrapper.type=OptimWrapper on an AMP config: the AMP keys must go too
        dropped = [k for k in AMP_ONLY_KEYS if k in wrapper and wrapper.get('type', 'OptimWrapper') in PLAIN_TYPES]
        for k in dropped:
            wrapper.pop(k)
        return f"note: optim_wrapper is a plain OptimWrapper: dropped its AMP-only {', '.join(dropped)}" if dropped \
            else None
    if accelerator and not no_amp:
        return None
    wrapper['type'] = 'OptimWrapper'
    dropped = [k for k in AMP_ONLY_KEYS if wrapper.pop(k, None) is not None]
    why = '--no-amp' if no_amp else 'no CUDA device'
    return (f'note: {why}: training in fp32 with OptimWrapper instead of the config\'s AmpOptimWrapper'
            + (f' (dropped {", ".join(dropped)})' if dropped else ''))
