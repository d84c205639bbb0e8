"""Timing of one step, shared by ``benchmark_backbone.py`` and ``benchmark.py``.

``time_steps`` runs ``step()`` ``warmup + iters`` times. For each timed step it records the wall time (host clock
around a step that starts and ends with ``torch.cuda.synchronize()``, so launch overhead and host work count) and,
on CUDA, the GPU time (CUDA events recorded before and after the step on the current stream). It returns medians
in ms and the peak memory of the phase in MiB (``torch.cuda.max_memory_allocated``; on CPU the process' peak RSS,
which only grows, and the GPU time is NaN).
"""
from __future__ import annotations

import resource
import statistics
import time

import torch


def sync(device) -> None:
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize()


def reset_peak(device) -> None:
    if torch.device(device).type == 'cuda':
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_mib(device) -> float:
    if torch.device(device).type == 'cuda':
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def time_steps(step, device, warmup: int, iters: int, on_step=None) -> dict:
    """``dict(wall_ms, gpu_ms, peak_mib, walls_ms)``: medians over ``iters`` timed calls of ``step()`` after
    ``warmup`` untimed ones; ``on_step()`` (e.g. a progress bar) is called after every call."""
    cuda = torch.device(device).type == 'cuda'
    reset_peak(device)
    walls, events = [], []
    for i in range(warmup + iters):
        sync(device)
        start = torch.cuda.Event(enable_timing=True) if cuda else None
        end = torch.cuda.Event(enable_timing=True) if cuda else None
        t0 = time.perf_counter()
        if cuda:
            start.record()
        step()
        if cuda:
            end.record()
        sync(device)
        if i >= warmup:
            walls.append((time.perf_counter() - t0) * 1e3)
            if cuda:
                events.append(start.elapsed_time(end))
        if on_step:
            on_step()
    return dict(wall_ms=statistics.median(walls), gpu_ms=statistics.median(events) if events else float('nan'),
                peak_mib=peak_mib(device), walls_ms=walls)
