"""CUDA graphs for a chain of blocks: a block's forward and backward kernels replayed as two captured graphs.

Why: at feature-map sizes a training step of these backbones waits for the host, not the GPU: even as one autograd
node a block issues a few dozen kernel launches and other PyTorch calls per direction, each costing more host time
than its kernel takes on the GPU (``docs/benchmarks.md``, "Fast path and graph replay", has the measurement against
``torch.cuda.make_graphed_callables`` and ``torch.compile(mode="reduce-overhead")``). A replayed graph issues all of
them for about the host cost of one launch.

How (``BlockGraphs``: one per block; ``GraphPool``: one per backbone):

- A block captures its forward graph at the ``warmup``-th consecutive call with the same signature (input shape,
  dtype and device, the block's non-tensor arguments, which gradients are needed, the addresses of the parameters
  read in place, the shapes of the other tensors) and its backward graph at the first backward after that. Before
  that it runs eagerly: training on sizes that never repeat never captures. Eval (no autograd) and training calls
  are separate signatures. No graphs under ``torch.inference_mode``.
- Memory cap: a block keeps the graphs of at most ``GraphPool.max_signatures`` signatures (default 3), least
  recently used first out; a captured signature holds the block's output, what its backward saves and its
  gradients at that size for as long as it is kept. Multi-scale training (mmdet's keep-ratio resize gives a few
  recurring batch shapes) keeps the most recent sizes captured and runs the others eagerly until they repeat.
- Weights are read in place (their addresses are part of the signature: ``cast_linear_weights`` keeps its
  low-precision buffer from step to step); per-call tensors (stochastic-depth masks) are copied into the graph's
  own buffers before each replay (one ``_foreach_copy_``).
- Maps pass between the blocks of a stage through two ring buffers: block j reads its input from ring[(j + 1) % 2]
  and writes its output into ring[j % 2] (the backward likewise with gradients, through the same buffers), so a
  chain of replays needs no copies; a map from elsewhere (the stage's input, a gradient summed over two consumers)
  is copied in. The stage's last block writes its output into a buffer of its own: the stage's norm and
  downsampler keep it for their backward.
- All graphs of a backbone share one memory pool and are captured in the order they first run (forward blocks in
  order, then the backward in reverse), so memory that one graph frees is reused by the graphs captured after it,
  as eager mode reuses it. That reuse is safe while graphs replay in that order, so a graph is replayed only when
  no forward captured at or after it still waits for its backward (a forward replayed while autograd records keeps
  its saved tensors until the engine releases them, seen through a weak reference to a sentinel saved for
  backward); otherwise that call runs eagerly. Two forwards before one backward, ``retain_graph`` and forwards that
  are never backpropagated stay correct: they only fall back to eager calls.
- The forward returns an alias of the graph's output buffer; the backward returns the graph's own gradient tensors,
  the same objects every time (autograd never steals a tensor that something else still references).

- A memory pool handle is live only while some graph captured into it exists (PyTorch's allocator asserts when a
  capture joins a pool whose graphs are all gone): the pool starts a fresh handle whenever its last graph was
  evicted. Deleting the backbone deletes its graphs; the pools' memory goes back to PyTorch's cache
  (``torch.cuda.empty_cache()`` returns it to the device).

Limits: CUDA only (``GraphPool(emulate=True)`` reruns the captured functions instead, for tests on CPU); not
under activation checkpointing (the backbone turns graphs off with ``with_cp``); a capture that fails (an op that
syncs with the host) warns once and turns the pool's graphs off.
"""
from __future__ import annotations

import collections
import dataclasses
import warnings
import weakref
from typing import Any, Callable

import torch

__all__ = ['GraphPool', 'BlockGraphs', 'attach_graphs']


class _Ring:
    """Two buffers ``(B, H, W, C)`` a stage's blocks pass their maps (or gradients) through."""

    def __init__(self, like: torch.Tensor, dtype: torch.dtype) -> None:
        self.bufs = tuple(torch.empty(like.shape, dtype=dtype, device=like.device) for _ in range(2))


class _FakeGraph:
    """Stand-in for ``torch.cuda.CUDAGraph`` (``emulate=True``): replay reruns the function and copies its tensors
    into the captured result's, so outputs keep their identity and buffers as with a real graph."""

    def __init__(self, fn: Callable[[], Any], result: Any) -> None:
        self.fn, self.result = fn, result

    def replay(self) -> None:
        _copy_into(self.result, self.fn())


def _copy_into(dst: Any, src: Any) -> None:
    if isinstance(dst, torch.Tensor):
        if dst is not src:
            dst.copy_(src)
    elif isinstance(dst, (tuple, list)):
        for d, s in zip(dst, src):
            _copy_into(d, s)
    elif isinstance(dst, dict):
        for k in dst:
            _copy_into(dst[k], src[k])
    elif dataclasses.is_dataclass(dst) and not isinstance(dst, type):
        for f in dataclasses.fields(dst):
            _copy_into(getattr(dst, f.name), getattr(src, f.name))


class GraphPool:
    """The memory pool, capture order and pending forwards shared by one backbone's :class:`BlockGraphs`.

    Args:
        emulate: rerun the captured functions instead of CUDA graphs (any device; for tests).
        max_signatures: captured signatures each block keeps (least recently used out; module docstring).
    """

    def __init__(self, emulate: bool = False, max_signatures: int = 3) -> None:
        if isinstance(max_signatures, bool) or not isinstance(max_signatures, int) or max_signatures < 1:
            raise ValueError(f'max_signatures must be an int >= 1, got {max_signatures!r}')
        self.emulate = emulate
        self.max_signatures = max_signatures
        self.enabled = True
        self._handle = None
        self._live: weakref.WeakSet = weakref.WeakSet()      # graphs captured into self._handle, still alive
        self.captures = 0                                    # graphs captured so far (forward and backward)
        self._streams: dict[torch.device, torch.cuda.Stream] = {}
        self._seq = 0
        self._pending: list[tuple[int, weakref.ref]] = []
        self._rings: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

    def __reduce__(self):                   # deepcopy / pickle: a fresh pool (graphs are not copied)
        return GraphPool, (self.emulate, self.max_signatures)

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def busy(self, seq: int) -> bool:
        """Whether a forward captured at or after ``seq`` still waits for its backward (module docstring)."""
        self._pending = [(s, ref) for s, ref in self._pending if ref() is not None]
        return any(s >= seq for s, _ in self._pending)

    def hold(self, seq: int, sentinel: torch.Tensor) -> None:
        self._pending.append((seq, weakref.ref(sentinel)))

    def ring(self, key: tuple, like: torch.Tensor, dtype: torch.dtype) -> _Ring:
        ring = self._rings.get(key)
        if ring is None:
            ring = self._rings[key] = _Ring(like, dtype)
        return ring

    def capture(self, fn: Callable[[], Any], device: torch.device) -> tuple[Any, Any]:
        """``(graph, result)``: ``fn()`` captured into this pool; the captured kernels have not run yet
        (``graph.replay()``). No warm-up run: the caller ran ``fn``'s kernels eagerly before (Triton compiled), and
        the library state a capture sets up lazily (cuBLAS workspaces) comes from the pool."""
        self.captures += 1
        if self.emulate:
            result = fn()
            graph = _FakeGraph(fn, result)
            self._live.add(graph)
            return graph, result
        if self._handle is None or not self._live:     # a handle whose graphs are all gone cannot be joined
            self._handle = torch.cuda.graph_pool_handle()
        stream = self._streams.get(device)
        if stream is None:
            stream = self._streams[device] = torch.cuda.Stream(device)
        current = torch.cuda.current_stream(device)
        stream.wait_stream(current)
        graph = torch.cuda.CUDAGraph()
        autocast = torch.is_autocast_enabled('cuda')
        # autocast's cast cache must not hand tensors of the capture to later eager ops (PyTorch's rule for capture)
        with torch.cuda.stream(stream), torch.autocast('cuda', dtype=torch.get_autocast_dtype('cuda'),
                                                       enabled=autocast, cache_enabled=False):
            graph.capture_begin(pool=self._handle, capture_error_mode='thread_local')
            try:
                result = fn()
            except BaseException:
                try:
                    graph.capture_end()
                except RuntimeError:
                    pass
                raise
            graph.capture_end()
        current.wait_stream(stream)
        self._live.add(graph)
        return graph, result

    def disable(self, error: BaseException) -> None:
        self.enabled = False
        warnings.warn(f'CUDA graph capture of a block failed, running eagerly from now on: {error!r}', stacklevel=3)


def _copy_unless_same(buf: torch.Tensor, t: torch.Tensor) -> None:
    """Copy t into the graph buffer ``buf`` unless t is that buffer already (a ring handed on by the previous block)."""
    if t.data_ptr() != buf.data_ptr() or t.stride() != buf.stride():
        buf.copy_(t)


class _Entry:
    """One captured signature of a block: its graphs, buffers and saved tensors."""

    def __init__(self, key, seq, copied_idx, copied_dst, rings, x_static, dout_static, dx_buf, bwd):
        self.key, self.seq, self.copied_idx, self.copied_dst = key, seq, copied_idx, copied_dst
        self.rings = rings                  # the pool keeps rings only while an entry uses them
        self.x_static, self.dout_static, self.dx_buf, self.bwd = x_static, dout_static, dx_buf, bwd
        self.graph = self.saved = self.aux = self.out = None
        self.bwd_graph = self.bwd_seq = self.grads = None
        self.gen = 0
        self.dropped = False

    def load(self, x: torch.Tensor, copied) -> None:
        _copy_unless_same(self.x_static, x)
        if self.copied_idx:
            torch._foreach_copy_(self.copied_dst, [copied[i] for i in self.copied_idx])


class _Run:
    """What one replayed forward hands its autograd node: the output alias, the sentinel, the backward."""
    __slots__ = ('graphs', 'entry', 'gen', 'out', '_sentinel')

    def __init__(self, graphs, entry, gen, out, sentinel):
        self.graphs, self.entry, self.gen, self.out, self._sentinel = graphs, entry, gen, out, sentinel

    def attach(self, ctx) -> torch.Tensor:
        """Save the sentinel for backward and return the output (call once, in the autograd Function's forward).
        Neither stays referenced here: only autograd keeps the sentinel, so it dies when the engine releases the
        node's saved tensors, and holding the output would make a cycle through the node."""
        ctx.save_for_backward(self._sentinel)
        out, self._sentinel, self.out = self.out, None, None
        return out

    def backward(self, dout: torch.Tensor) -> list:
        return self.graphs.backward(self, dout)


class BlockGraphs:
    """The CUDA graphs of one block (module docstring).

    Args:
        pool: the backbone's :class:`GraphPool`.
        tag: the block's stage (blocks of one stage share ring buffers).
        index: the block's index among the graphed blocks of its stage.
        last: whether it is the stage's last graphed block (its output gets a buffer of its own).
        warmup: eager calls with one signature before it is captured (>= 1).
    """

    def __init__(self, pool: GraphPool, tag: Any, index: int, last: bool, warmup: int = 2) -> None:
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f'warmup must be an int >= 1, got {warmup!r}')
        self.pool, self.tag, self.index, self.last, self.warmup = pool, tag, index, last, warmup
        self._entries: collections.OrderedDict[tuple, _Entry] = collections.OrderedDict()   # LRU, newest last
        self._seen: dict[bool, tuple[Any, int]] = {}

    def signatures(self) -> list[tuple]:
        """The captured signatures ``(train, key)``, least recently used first."""
        return list(self._entries)

    def latest(self, train: bool) -> _Entry | None:
        """The most recently used captured signature of training (``train``) or no-grad calls, or None."""
        return next((e for (t, _), e in reversed(self._entries.items()) if t == train), None)

    def __reduce__(self):
        return BlockGraphs, (self.pool, self.tag, self.index, self.last, self.warmup)

    def forward(self, x: torch.Tensor, inputs: tuple, copied: tuple, static_key: Any, train: bool,
                out_dtype: torch.dtype, fwd: Callable, bwd: Callable) -> _Run | None:
        """Replay (or capture, then replay) the forward, or return None to have the caller run eagerly.

        ``x (B, H, W, C)``; ``inputs``: tensors read in place (weights; or None); ``copied``: tensors copied into
        the graph's buffers before each replay (or None);
        ``static_key``: the non-tensor arguments (hashable) that ``fwd`` / ``bwd`` close over; ``train``: autograd
        records the call (a backward will follow); ``out_dtype``: the output's dtype (the gradient's too);
        ``fwd(x, inputs, copied, out, copy_input) -> (out, saved, aux)`` writes into ``out`` when given;
        ``bwd(saved, aux, dout, dx_out) -> gradients`` writes the input gradient into ``dx_out``."""
        pool = self.pool
        if not pool.enabled or not (x.is_cuda or pool.emulate) or torch.is_inference_mode_enabled():
            return None
        key = (static_key, x.shape, x.dtype, x.device, tuple(None if t is None else t.data_ptr() for t in inputs),
               tuple(None if t is None else (t.shape, t.dtype) for t in copied))
        entry = self._entries.get((train, key))
        if entry is None:
            seen_key, count = self._seen.get(train, (None, 0))
            count = count + 1 if seen_key == key else 1
            self._seen[train] = (key, count)
            if count < self.warmup:
                return None
            entry = self._capture(key, x, inputs, copied, train, out_dtype, fwd, bwd)
            if entry is None:
                return None
        elif pool.busy(entry.seq):
            return None
        else:
            self._entries.move_to_end((train, key))
            entry.load(x, copied)
            entry.graph.replay()
        entry.gen += 1
        sentinel = None
        if train:
            sentinel = torch.empty(0)
            pool.hold(entry.seq, sentinel)
        return _Run(self, entry, entry.gen, entry.out.detach(), sentinel)

    def _capture(self, key, x, inputs, copied, train, out_dtype, fwd, bwd) -> _Entry | None:
        pool = self.pool
        # block i reads ring[(i + 1) % 2] of its input's dtype, writes ring[i % 2] of its output's dtype; the
        # backward the same with gradients, through the same rings (the forward's maps there are dead by then)
        rings = [pool.ring((self.tag, x.shape, x.dtype, x.device), x, x.dtype),
                 pool.ring((self.tag, x.shape, out_dtype, x.device), x, out_dtype)]
        x_static = rings[0].bufs[(self.index + 1) % 2]
        out_buf = None if self.last else rings[1].bufs[self.index % 2]
        dout_static = dx_buf = None
        if train:
            dout_static, dx_buf = rings[1].bufs[(self.index + 1) % 2], rings[0].bufs[self.index % 2]
        copied_idx = [i for i, t in enumerate(copied) if t is not None]
        copied_dst = [copied[i].clone() for i in copied_idx]
        entry = _Entry(key, pool.next_seq(), copied_idx, copied_dst, rings, x_static, dout_static, dx_buf, bwd)
        static_copied = list(copied)
        for i, t in zip(copied_idx, copied_dst):
            static_copied[i] = t
        entry.load(x, copied)
        try:
            entry.graph, (entry.out, entry.saved, entry.aux) = pool.capture(
                lambda: fwd(x_static, inputs, static_copied, out_buf, True), x.device)
        except Exception as error:          # noqa: BLE001 (a real bug fails again in the eager call that follows)
            pool.disable(error)
            return None
        entry.graph.replay()
        while len(self._entries) >= pool.max_signatures:
            _, old = self._entries.popitem(last=False)
            old.dropped = True              # a pending backward of it runs eagerly on its saved tensors
        self._entries[(train, key)] = entry
        return entry

    def backward(self, run: _Run, dout: torch.Tensor) -> list:
        """The gradients of the forward ``run`` (the graph's own tensors, or fresh ones from an eager fallback)."""
        entry, pool = run.entry, self.pool
        if entry.gen != run.gen:
            raise RuntimeError('the CUDA-graph buffers of a block were overwritten before its backward; this should '
                               'not happen (see backbones/layers/block_graphs.py); build the backbone with '
                               'cuda_graphs=False to work around it')
        capture = entry.bwd_graph is None and pool.enabled and not entry.dropped
        if not capture and (entry.bwd_graph is None or entry.dropped or pool.busy(entry.bwd_seq)):
            return entry.bwd(entry.saved, entry.aux, dout, None)
        _copy_unless_same(entry.dout_static, dout)
        if capture:
            try:
                entry.bwd_seq = pool.next_seq()
                entry.bwd_graph, entry.grads = pool.capture(
                    lambda: entry.bwd(entry.saved, entry.aux, entry.dout_static, entry.dx_buf), dout.device)
            except Exception as error:      # noqa: BLE001
                pool.disable(error)
                return entry.bwd(entry.saved, entry.aux, dout, None)
        entry.bwd_graph.replay()
        return entry.grads


def attach_graphs(pool: GraphPool, stages) -> None:
    """Give every block of ``stages`` (one sequence of the graphed blocks per stage) a :class:`BlockGraphs` on
    ``pool``: tagged by its stage (blocks of one stage share ring buffers), indexed among its stage's blocks."""
    for i, blocks in enumerate(stages):
        for j, blk in enumerate(blocks):
            blk.graphs = BlockGraphs(pool, tag=i, index=j, last=j == len(blocks) - 1)
