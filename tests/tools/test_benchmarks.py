"""CPU smoke runs of the issue-19 benchmark scripts at tiny sizes: the tables have the expected rows and columns
(no timing assertions: CPU times say nothing about the GPU)."""
from __future__ import annotations

import json

import pytest

from conftest import load_tool

COLUMNS = ['model', 'mode', 'size', 'wall ms', 'GPU ms', 'img/s', 'peak MiB', 'first step s',
           'vs Swin-T best img/s', 'vs Swin-T least MiB', 'note']


def _table(out: str, first: str) -> list[list[str]]:
    """The markdown table of ``out`` whose header starts with ``| first``, as rows of cells (header first)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f'| {first}'))
    rows = []
    for line in lines[start:]:
        if not line.startswith('|'):
            break
        if not line.startswith('|---'):
            rows.append([c.strip() for c in line.strip('|').split('|')])
    return rows


def test_backbone_benchmark_rows_and_a_failing_mode(tmp_path, capsys, monkeypatch):
    bench = load_tool('benchmark_backbone')
    build = bench.build

    def no_graphs_fails(cfg):
        if cfg.get('cuda_graphs') is False:
            raise RuntimeError('graphs off is broken here')
        return build(cfg)

    monkeypatch.setattr(bench, 'build', no_graphs_fails)
    bench.main(['--device', 'cpu', '--sizes', '64x64', '64x96', '--iters', '1', '--warmup', '0',
                '--models', 'Swin-T', 'HWT-T', '--modes', 'eager', 'default', 'no-graphs',
                '--json', str(tmp_path / 'bb.json')])
    table = _table(capsys.readouterr().out, 'model')
    assert table[0] == COLUMNS
    assert [r[:3] for r in table[1:]] == [[m, mode, size] for size in ('64x64', '64x96')
                                          for m, mode in (('Swin-T', 'eager'), ('HWT-T', 'default'),
                                                          ('HWT-T', 'no-graphs'))]
    for r in table[1:]:
        if r[1] == 'no-graphs':  # a row with the error, no numbers
            assert r[3] == 'nan' and r[-1] == 'RuntimeError: graphs off is broken here'
        else:
            assert float(r[3]) > 0 and float(r[7]) >= 0 and r[-1] == ''
        if r[0] == 'Swin-T':
            assert r[8] == '1.00' and r[9] == '1.00'  # its only mode is the best one
    rows = json.loads((tmp_path / 'bb.json').read_text())['rows']
    assert [r['mode'] for r in rows] == ['eager', 'default', 'no-graphs'] * 2


def test_varying_sizes_are_sixteen_distinct_multiples_of_32_in_range():
    sizes = load_tool('benchmark_backbone').varying_sizes()
    assert len(sizes) == len(set(sizes)) == 16
    assert all(480 <= h <= 800 and 640 <= w <= 1333 and h % 32 == w % 32 == 0 for h, w in sizes)
    assert sizes == load_tool('benchmark_backbone').varying_sizes()  # fixed seed


@pytest.mark.slow
def test_backbone_benchmark_compiled_modes_varying_and_merge(tmp_path, capsys, monkeypatch):
    bench = load_tool('benchmark_backbone')
    monkeypatch.setattr(bench, 'varying_sizes', lambda: [(32, 32), (64, 32)])  # the real 16 are too big for a CPU
    common = ['--device', 'cpu', '--sizes', '64x64', '--iters', '1', '--warmup', '0']
    bench.main(common + ['--models', 'Swin-T', '--modes', 'eager', 'compile', 'reduce-overhead',
                         '--json', str(tmp_path / 'swin.json')])
    bench.main(common + ['--models', 'Swin-T', 'HWT-T', '--modes', 'eager', 'default', '--varying',
                         '--json', str(tmp_path / 'ours.json')])
    capsys.readouterr()
    bench.main(['--merge', str(tmp_path / 'swin.json'), str(tmp_path / 'ours.json')])
    out = capsys.readouterr().out
    table = _table(out, 'model')
    assert [r[:2] for r in table[1:]] == [['Swin-T', 'eager'], ['Swin-T', 'compile'], ['Swin-T', 'reduce-overhead'],
                                          ['HWT-T', 'default']]  # the second Swin-T eager row is dropped
    assert max(float(r[8]) for r in table[1:4] if r[8] != 'nan') == 1.0  # ratios against the best Swin-T mode
    varying = _table(out, 'model | mode | sizes')
    assert [r[:3] for r in varying[1:]] == [['Swin-T', 'eager', '2 sizes'], ['HWT-T', 'default', '2 sizes']]
    assert varying[1][5] == '1.00' and float(varying[2][4]) > 0
    assert varying[1][7] == '1.00' and float(varying[2][6]) > 0      # the second pass over the same sizes


@pytest.mark.slow
def test_training_step_benchmark_of_a_stock_swin_config_with_compiled_backbone(tmp_path, capsys):
    rc = load_tool('benchmark').main(
        ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py', '--shape', '64', '64', '--batch-size', '2',
         '--mode', 'train', '--iters', '1', '--warmup', '1', '--device', 'cpu', '--compile-backbone',
         '--out', str(tmp_path / 'st.json')])
    assert rc == 0
    res = json.loads((tmp_path / 'st.json').read_text())['results'][0]
    assert res['compiled_backbone'] and res['scope'] == 'mmdet' and res['train']['input_shape'] == [2, 3, 64, 64]
    assert 0 < res['backbone']['median_ms'] and res['backbone']['share'] > 0
    assert 'mask-rcnn_swin-t-p4-w7_fpn_1x_coco + compiled backbone' in capsys.readouterr().out


def test_training_step_profile_by_part(tmp_path, capsys):
    """``--profile``: host ms for every part of a detector's step; the labels are gone from the model afterwards."""
    rc = load_tool('benchmark').main(
        ['configs/hwt/mask-rcnn_hwt-t_fpn_1x_coco.py', '--shape', '64', '64', '--batch-size', '1', '--mode', 'train',
         '--iters', '1', '--warmup', '0', '--device', 'cpu', '--profile', '1', '--out', str(tmp_path / 'p.json')])
    assert rc == 0
    prof = json.loads((tmp_path / 'p.json').read_text())['results'][0]['profile']
    parts = prof['parts']
    for name in ('backbone', 'neck', 'rpn_head', 'roi_head', 'backward', 'optimizer'):
        assert parts[name]['host_ms'] > 0, name
    assert sum(parts[k]['host_ms'] for k in ('backbone', 'neck', 'rpn_head', 'roi_head')) < prof['wall_ms']
    assert 'GPU busy' in capsys.readouterr().out


def test_profile_labels_are_removed_and_union_counts_overlap_once():
    import torch
    prof = load_tool('_profile_step')

    class Head(torch.nn.Module):
        def loss(self, x):
            return x

    model = torch.nn.Module()
    model.backbone, model.head = torch.nn.Identity(), Head()
    with prof.labelled_parts(model) as labels:
        assert labels == ['backbone', 'head'] and 'loss' in vars(model.head)
    assert 'loss' not in vars(model.head) and 'forward' not in vars(model.backbone)
    assert prof._union_ms([(0, 1000), (500, 1500), (3000, 4000)]) == 2.5


@pytest.mark.parametrize('hw, dilation', [((16, 21), 1), ((32, 29), 4), ((15, 40), 2)])
def test_flex_na2d_formula_mask_is_the_exact_neighbourhood(hw, dilation):
    """The plain-formula FlexAttention baseline masks exactly the pairs of NATTEN's neighbourhood (our reference's
    clamped windows per axis), so the benchmark compares the same attention."""
    import torch

    from sparse_ops.reference.neighborhood_2d import axis_neighbors
    bench = load_tool('benchmark_attention')
    h, w = hw
    qi, ki = torch.arange(h * w)[:, None], torch.arange(h * w)[None, :]
    got = bench.na2d_formula(h, w, bench.NA2D_K, dilation)(None, None, qi, ki)

    def axis(length):
        lo, size = axis_neighbors(length, bench.NA2D_K, dilation)
        p = torch.arange(length)
        pos = p[None, :] // dilation
        return (p[None, :] % dilation == p[:, None] % dilation) & (pos >= lo[:, None]) & (pos < (lo + size)[:, None])
    ay, ax = axis(h), axis(w)
    want = ay[qi // w, ki // w] & ax[qi % w, ki % w]
    assert torch.equal(got, want)
    assert int(want.sum(1).min()) == int(want.sum(1).max()) == bench.NA2D_K ** 2


def test_flex_na1d_formula_mask_is_the_clamped_interval():
    import torch

    from sparse_ops.patterns import na1d_intervals
    bench = load_tool('benchmark_attention')
    n = 300
    qi, ki = torch.arange(n)[:, None], torch.arange(n)[None, :]
    lo, hi = na1d_intervals(n, bench.NA1D)
    assert torch.equal(bench.na1d_formula(n, bench.NA1D)(None, None, qi, ki), (ki >= lo[:, None]) & (ki <= hi[:, None]))


def test_routing_baselines_gather_matmul_and_gather_sdpa_agree():
    """BiFormer's gather scheme written with a matmul and with ``scaled_dot_product_attention`` is the same
    attention (CPU, fp32)."""
    import torch
    bench = load_tool('benchmark_attention')
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 16, 24, 8, generator=g) for _ in range(3))
    a, b = bench.biformer_gather(q, k, v), bench.biformer_gather_sdpa(q, k, v)
    assert a.shape == q.shape
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_host_cost_without_cuda_exits_with_one_line(capsys, monkeypatch):
    """``tools/host_cost.py`` measures the host cost of GPU launches: without CUDA it returns 2 and says why in one
    line."""
    import torch
    tool = load_tool('host_cost')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert tool.main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'needs a CUDA device' in err[0]


@pytest.mark.parametrize('size', ['12', '0x64', 'axb'])
def test_host_cost_bad_size_is_one_line(capsys, size):
    """``--size`` is checked before anything runs: a malformed or empty size returns 2 with one line naming it."""
    tool = load_tool('host_cost')
    assert tool.main(['--size', size]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and repr(size) in err[0] and '--size' in err[0]
