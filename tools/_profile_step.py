"""Where a training step's time goes, host and GPU, by part of the model (``benchmark.py --profile``).

``profile_parts(step, model, device, steps)`` runs ``step()`` under ``torch.profiler`` for ``steps`` calls (after
one untimed call) with the model's parts labelled by ``torch.profiler.record_function``:

- ``backbone`` / ``neck``: their ``forward``;
- every other top-level child with a ``loss_and_predict`` or ``loss`` method (mmdet's ``rpn_head`` / ``roi_head``,
  mmseg's ``decode_head`` / ``auxiliary_head``): that method, i.e. the head's forward, target assignment and losses;
- whatever labels ``step`` itself opens (``benchmark.py`` labels ``backward`` and ``optimizer``).

Per label and per step it reports the host time (the range on the CPU, launches and Python included) and the GPU
time of the kernels launched inside it; for the whole step the wall time under the profiler and the GPU busy time
(the union of all kernel intervals). GPU busy well below the wall time means the step waits on the host: a faster
backbone then shortens the GPU's work but not the step. The profiler adds host time per op, so these walls are
longer than ``_timing``'s; compare parts with each other, not with the timed table. Kernels replayed inside a CUDA
graph may be invisible to the profiler; a part whose GPU time is 0 while its host time is not says so.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch.autograd import DeviceType

HEAD_METHODS = ('loss_and_predict', 'loss')
STEP_LABELS = ('backward', 'optimizer')    # opened by the step itself (benchmark.py)


def _labelled(fn, label: str):
    def wrapper(*args, **kwargs):
        with torch.profiler.record_function(label):
            return fn(*args, **kwargs)
    return wrapper


@contextmanager
def labelled_parts(model: torch.nn.Module):
    """Label the parts of ``model`` (module docstring) for the profiler; yields the labels; restores on exit."""
    patched = []
    for name, child in model.named_children():
        if name in ('backbone', 'neck'):
            method = 'forward'
        else:
            method = next((m for m in HEAD_METHODS if callable(getattr(child, m, None))), None)
        if method is None:
            continue
        patched.append((child, method, name))
        setattr(child, method, _labelled(getattr(child, method), name))
    try:
        yield [p[2] for p in patched]
    finally:
        for child, method, _ in patched:
            delattr(child, method)  # the instance attribute; the class method shows again


def _union_ms(intervals: list[tuple[float, float]]) -> float:
    """Length in ms of the union of (start_us, end_us) intervals."""
    total, end = 0.0, float('-inf')
    for s, e in sorted(intervals):
        if s > end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total / 1e3


def profile_parts(step, model: torch.nn.Module, device: str, steps: int = 5) -> dict:
    """``dict(wall_ms, gpu_busy_ms, parts={label: dict(host_ms, gpu_ms)})``, per step (module docstring)."""
    cuda = torch.device(device).type == 'cuda'
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with labelled_parts(model) as labels:
        step()
        if cuda:
            torch.cuda.synchronize()
        with torch.profiler.profile(activities=activities) as prof:
            with torch.profiler.record_function('step'):
                for _ in range(steps):
                    step()
                if cuda:
                    torch.cuda.synchronize()
    events = prof.events()
    ranges = {}                                   # label -> [(start_us, end_us)], one per call
    for ev in events:
        if ev.name in labels or ev.name in STEP_LABELS:
            ranges.setdefault(ev.name, []).append((ev.time_range.start, ev.time_range.end))
    parts = {k: dict(host_ms=sum(e - s for s, e in v) / 1e3 / steps, gpu_ms=0.0) for k, v in ranges.items()}
    parts['(unlabelled)'] = dict(host_ms=float('nan'), gpu_ms=0.0)
    for ev in events:                             # an op's kernels count for the label open when it was launched
        if not ev.kernels:                        # (backward ops run on autograd's thread: by time, not nesting)
            continue
        ms = sum(k.duration for k in ev.kernels) / 1e3 / steps
        label = next((k for k, v in ranges.items() if any(s <= ev.time_range.start < e for s, e in v)),
                     '(unlabelled)')
        parts[label]['gpu_ms'] += ms
    step_ev = next(ev for ev in events if ev.name == 'step')
    device = [(ev.time_range.start, ev.time_range.end) for ev in events
              if ev.device_type != DeviceType.CPU and not ev.is_user_annotation]
    return dict(wall_ms=step_ev.cpu_time_total / 1e3 / steps, gpu_busy_ms=_union_ms(device) / steps, parts=parts)


def format_parts(name: str, r: dict) -> str:
    """A few lines: the step's wall and GPU busy time, then host / GPU ms per part."""
    lines = [f'{name}: per step under the profiler, wall {r["wall_ms"]:.1f} ms, GPU busy {r["gpu_busy_ms"]:.1f} ms '
             f'({100 * r["gpu_busy_ms"] / max(r["wall_ms"], 1e-9):.0f} %)',
             f'  {"part":<16} {"host ms":>8} {"GPU ms":>8}']
    lines += [f'  {k:<16} {v["host_ms"]:>8.1f} {v["gpu_ms"]:>8.1f}' for k, v in r['parts'].items()]
    return '\n'.join(lines)
