"""Generalized Hilbert order: permutation, unit steps, the diagonal rule, aligned squares, caching."""
import pytest
import torch

from sparse_ops import hilbert_coords, hilbert_inverse, hilbert_order

SIDES = range(1, 49)


def _steps(h, w):
    """(|dy|, |dx|) of every step along the curve, from the row-major order only."""
    order = hilbert_order(h, w)
    y, x = order // w, order % w
    return (y[1:] - y[:-1]).abs(), (x[1:] - x[:-1]).abs()


@pytest.mark.parametrize('h', SIDES, ids=lambda h: f'h{h}')
def test_permutation_and_steps_all_sizes(h):
    for w in SIDES:
        order = hilbert_order(h, w)
        assert order.dtype == torch.long and order.shape == (h * w,)
        assert torch.equal(torch.sort(order).values, torch.arange(h * w)), f'{h}x{w} not a permutation'
        assert order[0] == 0, f'{h}x{w} does not start at (0, 0)'
        dy, dx = _steps(h, w)
        unit = (dy + dx) == 1
        diagonal = (dy == 1) & (dx == 1)
        assert bool((unit | diagonal).all()), f'{h}x{w}: a step is neither a unit nor a diagonal step'
        n_diag = int(diagonal.sum())
        assert n_diag <= 1, f'{h}x{w}: {n_diag} diagonal steps'
        if n_diag:
            long_side, short_side = max(h, w), min(h, w)
            assert long_side % 2 == 1 and short_side % 2 == 0, f'{h}x{w}: diagonal step not allowed here'


@pytest.mark.parametrize('side', [1, 2, 4, 8, 16, 32, 64], ids=lambda s: f'{s}x{s}')
def test_power_of_two_chunks_are_aligned_squares(side):
    coords = hilbert_coords(side, side)
    k = 0
    while 4 ** k <= side * side:
        size, chunk = 2 ** k, 4 ** k
        c = coords.view(-1, chunk, 2)
        lo, hi = c.min(dim=1).values, c.max(dim=1).values
        assert bool((hi - lo == size - 1).all()), f'a chunk of {chunk} tokens is not a {size}x{size} square'
        assert bool((lo % size == 0).all()), f'a chunk of {chunk} tokens is not aligned to {size}'
        k += 1


def test_classic_hilbert_corners():
    # a Hilbert curve on a 2^n square enters at one corner and leaves at an adjacent corner
    for side in (2, 4, 8, 16):
        coords = hilbert_coords(side, side)
        end = coords[-1].tolist()
        assert end in ([0, side - 1], [side - 1, 0]), f'{side}x{side} ends at {end}'


@pytest.mark.parametrize('hw', [(1, 1), (1, 17), (17, 1), (13, 7), (7, 13), (31, 45)],
                         ids=lambda hw: f'{hw[0]}x{hw[1]}')
def test_inverse_and_coords_agree_with_order(hw):
    h, w = hw
    order, inv, coords = hilbert_order(h, w), hilbert_inverse(h, w), hilbert_coords(h, w)
    assert torch.equal(inv[order], torch.arange(h * w))
    assert torch.equal(order[inv], torch.arange(h * w))
    assert coords.shape == (h * w, 2)
    assert torch.equal(coords[:, 0] * w + coords[:, 1], order)
    assert bool((coords[:, 0] < h).all() and (coords[:, 1] < w).all())


def test_locality_beats_row_major():
    # mean 2D extent of 16-token chunks: Hilbert chunks are compact, row-major chunks are 1x16 strips
    h, w = 32, 32
    coords = hilbert_coords(h, w).view(-1, 16, 2)
    extent = (coords.max(dim=1).values - coords.min(dim=1).values + 1).prod(dim=1).float().mean()
    assert extent <= 16.0 + 1e-6


def test_cached_per_size_and_device():
    assert hilbert_order(13, 7) is hilbert_order(13, 7)
    assert hilbert_order(13, 7, device='cpu') is hilbert_order(13, 7)
    assert hilbert_coords(5, 9) is hilbert_coords(5, 9)
    assert hilbert_order(7, 13) is not hilbert_order(13, 7)


@pytest.mark.gpu
def test_cuda_copy_cached():
    a = hilbert_order(13, 7, device='cuda')
    assert a.is_cuda and a is hilbert_order(13, 7, device='cuda')
    assert torch.equal(a.cpu(), hilbert_order(13, 7))


@pytest.mark.parametrize('h, w', [(0, 3), (3, 0), (-1, 2)])
def test_bad_size_raises(h, w):
    with pytest.raises(ValueError, match='>= 1'):
        hilbert_order(h, w)


def test_non_int_size_raises():
    with pytest.raises(TypeError, match='int'):
        hilbert_order(2.5, 3)
