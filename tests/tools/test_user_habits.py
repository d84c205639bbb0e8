"""The habits of mmdet / mmseg users (issue 22): segmentation ``--out DIR``, ``--show``, ``data_root=`` in every tool,
browse_dataset on stock val pipelines, the size benchmark.py really ran, demo.py's count and visualizers, get_flops
``--shape``, the neck-width check, shadowed packages, configs used from another folder, and the dist scripts."""
from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import DET_CFG, REPO, SEG_CFG, TINY_ARCH, TOOLS, load_tool

TINY = [TINY_ARCH]
ZOO_SEG = REPO / 'configs/nat/upernet_nat-t_8xb2-160k_ade20k-512x512.py'


def _random_checkpoint(cfg_path: Path, out: Path, options: dict) -> Path:
    """A checkpoint of the config's model with its random initial weights (what test.py / demo.py load)."""
    from mmengine.registry import MODELS, DefaultScope
    cfg, scope = load_tool('_cfg').read_config(str(cfg_path), options)
    with DefaultScope.overwrite_default_scope(scope):
        model = MODELS.build(cfg.model)
    model.init_weights()
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, out)
    return out


# ------------------------------------------------------------------------------------------------- test.py --out
def test_seg_out_dir_writes_label_pngs_equal_to_the_predictions(demo_root, tmp_path, monkeypatch):
    """--out DIR: one PNG per validation image, named after it, holding the predicted class + 1 (the dataset uses
    reduce_zero_label, so the PNG is in the on-disk label space); compared with the raw predictions of the same
    run, dumped by mmengine's DumpResults."""
    from mmengine.config import ConfigDict
    monkeypatch.chdir(demo_root)
    test = load_tool('test')
    ckpt = _random_checkpoint(SEG_CFG, tmp_path / 'seg.pth', {'model.backbone.arch.depths': [1, 1, 1, 1]})
    out = tmp_path / 'labels'
    cfg = test.build_cfg(test.parse_args([str(SEG_CFG), str(ckpt), '--work-dir', str(tmp_path / 'w'), '--out',
                                          str(out), '--cfg-options', *TINY]))
    pkl = tmp_path / 'raw.pkl'
    cfg.test_evaluator = [cfg.test_evaluator, ConfigDict(type='mmengine.DumpResults', out_file_path=str(pkl))]
    metrics = test._runtime.build_runner(cfg).test()
    assert 'mIoU' in metrics  # the metrics are still computed
    raw = pickle.loads(pkl.read_bytes())
    images = sorted((demo_root / 'data/demo/ade/images/validation').glob('*.jpg'))
    assert sorted(Path(r['img_path']).name for r in raw) == [p.name for p in images]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.stem + '.png' for p in images)
    classes = set()
    for r in raw:
        pred = r['pred_sem_seg']['data'][0].numpy()
        png = cv2.imread(str(out / (Path(r['img_path']).stem + '.png')), cv2.IMREAD_UNCHANGED)
        assert png.dtype == np.uint8 and png.shape == pred.shape == tuple(r['ori_shape'])
        np.testing.assert_array_equal(png, pred + 1)
        classes |= set(np.unique(pred).tolist())
    assert len(classes) > 1, 'a constant prediction would not show a mix-up of pixels'


def test_out_and_show_refusals(demo_root, tmp_path, monkeypatch):
    monkeypatch.chdir(demo_root)
    test = load_tool('test')
    ckpt = tmp_path / 'x.pth'
    ckpt.write_bytes(b'')                   # the arguments are checked before the file is read: no real weights
    import _checkpoint_hooks
    monkeypatch.setattr(test._checkpoint, 'check_checkpoint', lambda path: None)
    monkeypatch.setattr(_checkpoint_hooks, 'check_checkpoint_fit', lambda cfg, path, partial: None)

    def build(cfg, *extra):
        return test.build_cfg(test.parse_args([str(cfg), str(ckpt), '--work-dir', str(tmp_path / 'w'), *extra]))

    with pytest.raises(test._runtime.ConfigCheckError, match=r"--out: expected a \.pkl file for detection results"):
        build(DET_CFG, '--out', str(tmp_path / 'dets'))
    cfg = build(DET_CFG, '--out', str(tmp_path / 'dets.pkl'))
    assert cfg.test_evaluator[-1].type == 'DumpDetResults'  # detection keeps mmdet's pickle
    monkeypatch.delenv('DISPLAY', raising=False)
    monkeypatch.delenv('WAYLAND_DISPLAY', raising=False)
    monkeypatch.setattr(sys, 'platform', 'linux')
    with pytest.raises(test._runtime.ConfigCheckError, match=r'--show: this machine has no display \(DISPLAY'):
        build(SEG_CFG, '--show')
    monkeypatch.setenv('DISPLAY', ':0')
    cfg = build(DET_CFG, '--show', '--wait-time', '0.5')
    vis = cfg.default_hooks.visualization
    assert vis.draw and vis.show and vis.wait_time == 0.5


# ------------------------------------------------------------------------------------------------- data_root=
def test_data_root_moves_every_dataset_path_in_every_tool(tmp_path):
    """The config reader of every tool (train / test through load_config, browse_dataset / demo directly) and
    benchmark / get_flops' load_cfg move the dataloaders' roots and the evaluators' files; browse_dataset reads data
    through it in the val-split test below, train.py in the user-config test."""
    new = str(tmp_path / 'elsewhere')
    for cfg, _ in (load_tool('_cfg').read_config(str(DET_CFG), {'data_root': new}),
                   load_tool('benchmark').load_cfg(str(DET_CFG), {'data_root': new}),
                   load_tool('get_flops').load_cfg(str(DET_CFG), {'data_root': new})):
        for phase in ('train', 'val', 'test'):
            assert cfg[f'{phase}_dataloader'].dataset.data_root.rstrip('/') == new
        assert cfg.val_evaluator.ann_file.startswith(new + '/')


# ------------------------------------------------------------------------------------------------- browse_dataset
def test_browse_dataset_val_split_of_a_stock_mmseg_pipeline(demo_root, tmp_path, monkeypatch):
    """The zoo UperNet inherits mmseg's ADE20K val pipeline (Resize before LoadAnnotations), which crashed; the
    embedded data has the ADE20K layout, so data_root= points the config at it."""
    monkeypatch.chdir(demo_root)
    browse = load_tool('browse_dataset')
    out = tmp_path / 'val'
    assert browse.main([str(ZOO_SEG), '--split', 'val', '--num', '2', '--out-dir', str(out), '--cfg-options',
                        f'data_root={demo_root}/data/demo/ade']) == 0
    pngs = sorted(out.glob('*.png'))
    assert len(pngs) == 2
    src = sorted((demo_root / 'data/demo/ade/images/validation').glob('*.jpg'))[0]
    drawn = cv2.imread(str(pngs[0]))
    assert drawn.shape[:2] == (512, 512)  # the stock Resize (2048, 512), keep_ratio, of a 64 px image
    plain = cv2.resize(cv2.imread(str(src)), (512, 512), interpolation=cv2.INTER_LINEAR)
    assert np.abs(drawn.astype(int) - plain.astype(int)).mean() > 5  # the label map is drawn over it


def test_annotations_first_moves_only_the_annotation_loading():
    browse = load_tool('browse_dataset')
    p = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=(8, 8)), dict(type='LoadAnnotations'),
         dict(type='PackSegInputs')]
    assert [t['type'] for t in browse.annotations_first(p)] == ['LoadImageFromFile', 'LoadAnnotations', 'Resize',
                                                               'PackSegInputs']
    train = [p[0], p[2], p[1], p[3]]
    assert browse.annotations_first(train) == train


# ------------------------------------------------------------------------------------------------- benchmark
def test_benchmark_reports_the_size_each_phase_ran_at(demo_root, tmp_path, monkeypatch, capsys):
    """The demo segmentor's data preprocessor pads training batches to its 128 px crop: at --shape 64 64 the
    training step runs at 128 x 128, inference at 64 x 64; the table and the JSON say so."""
    import json
    monkeypatch.chdir(demo_root)
    out = tmp_path / 'bench.json'
    assert load_tool('benchmark').main([str(SEG_CFG), '--shape', '64', '64', '--batch-size', '2', '--iters', '1',
                                        '--warmup', '0',
                                        '--device', 'cpu', '--out', str(out), '--cfg-options', *TINY]) == 0
    (r, ) = json.loads(out.read_text())['results']
    assert r['infer']['input_shape'] == [2, 3, 64, 64] and r['train']['input_shape'] == [2, 3, 128, 128]
    printed = capsys.readouterr().out
    assert 'made the 64x64 input 128x128' in printed
    row = [line for line in printed.splitlines() if line.startswith('upernet_hwt-demo')][-1]
    assert [c.strip() for c in row.split('|')][2] == '64x64' and [c.strip() for c in row.split('|')][6] == '128x128'


# ------------------------------------------------------------------------------------------------- demo
def test_demo_counts_only_written_images_and_draws_with_the_libraries_visualizer(demo_root, tmp_path, monkeypatch,
                                                                                capsys):
    monkeypatch.chdir(demo_root)
    folder = tmp_path / 'in'
    folder.mkdir()
    src = sorted((demo_root / 'data/demo/ade/images/validation').glob('*.jpg'))[0]
    shutil.copy(src, folder / 'a.jpg')
    (folder / 'b.jpg').write_bytes(b'not an image')
    out = tmp_path / 'out'
    from mmseg.visualization import SegLocalVisualizer
    drawn_by = []
    original = SegLocalVisualizer.add_datasample
    monkeypatch.setattr(SegLocalVisualizer, 'add_datasample',
                        lambda self, *a, **k: (drawn_by.append(type(self)), original(self, *a, **k))[1])
    assert load_tool('demo').main([str(folder), str(SEG_CFG), '--out-dir', str(out), '--cfg-options', *TINY,
                                   f'data_root={tmp_path}']) == 0
    captured = capsys.readouterr()
    assert f'wrote 1 images to {out}' in captured.out
    assert f'1 unreadable file(s) skipped: {folder / "b.jpg"}' in captured.err
    assert [p.name for p in out.iterdir()] == ['a.png'] and drawn_by == [SegLocalVisualizer]


# ------------------------------------------------------------------------------------------------- get_flops
def test_get_flops_shape_takes_one_or_two_ints(demo_root, monkeypatch, capsys):
    monkeypatch.chdir(demo_root)
    flops = load_tool('get_flops')
    assert flops.main([str(DET_CFG), '--shape', '64', '--cfg-options', *TINY]) == 0
    assert 'input: [1, 3, 64, 64]' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        flops.main([str(DET_CFG), '--shape', '64', '64', '64'])
    assert '--shape takes one or two positive ints' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        flops.main(['--help'])
    assert 'one int for a square image' in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------- neck widths
def test_neck_and_head_widths_are_checked_against_the_backbone(demo_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(demo_root)
    train = load_tool('train')
    necks = load_tool('_necks')
    cfg, scope = load_tool('_cfg').read_config(str(DET_CFG), {'model.neck.in_channels': [256, 512, 1024, 2048]})
    with pytest.raises(train._runtime.ConfigCheckError) as e:
        necks.check_neck_widths(cfg, scope)
    assert str(e.value) == ('model.neck.in_channels=[256, 512, 1024, 2048] should be [32, 64, 128, 256]: the HWT '
                            'backbone gives [32, 64, 128, 256] channels per stage and out_indices (0, 1, 2, 3) '
                            'selects [32, 64, 128, 256]')
    cfg, scope = load_tool('_cfg').read_config(str(SEG_CFG), {'model.backbone.out_indices': [1, 2, 3],
                                                             'model.decode_head.in_channels': [64, 128, 256],
                                                             'model.decode_head.in_index': [0, 1, 2],
                                                             'model.auxiliary_head.in_index': 2})
    with pytest.raises(train._runtime.ConfigCheckError, match=r'^model\.auxiliary_head\.in_channels=128 \(in_index '
                       r'2\) should be 256: the HWT backbone gives \[32, 64, 128, 256\] channels per stage and '
                       r'out_indices \(1, 2, 3\) selects \[64, 128, 256\]$'):
        necks.check_neck_widths(cfg, scope)
    cfg.model.auxiliary_head.in_channels = 256
    necks.check_neck_widths(cfg, scope)  # consistent now
    # through train.py: one error line before the runner starts
    assert train.main([str(DET_CFG), '--work-dir', str(tmp_path), '--cfg-options',
                       'model.neck.in_channels=[96,192,384,768]']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: model.neck.in_channels=[96, 192, 384, 768] should be [32, 64')


def test_every_backbone_exposes_its_stage_widths():
    """num_features (what the neck check reads), built on the meta device as the check builds it; BiFormer's
    (new) also against a real forward of a small arch."""
    from mmengine.registry import MODELS
    import backbones  # noqa: F401
    expected = {'HWT': (96, 192, 384, 768), 'HNT': (64, 128, 256, 512), 'NAT': (64, 128, 256, 512),
                'DiNAT': (64, 128, 256, 512), 'BiFormer': (64, 128, 256, 512)}
    for name, widths in expected.items():
        with torch.device('meta'):
            model = MODELS.build(dict(type=name, arch='tiny'))
        assert tuple(model.num_features) == widths, name
    small = MODELS.build(dict(type='BiFormer', arch=dict(depths=[1, 1, 1, 1], embed_dims=[32, 64, 96, 128]),
                              n_win=2))
    with torch.no_grad():
        outs = small.eval()(torch.randn(1, 3, 37, 45))
    assert tuple(o.shape[1] for o in outs) == small.num_features == (32, 64, 96, 128)


# ------------------------------------------------------------------------------------------------- shadowing
def test_a_shadowing_backbones_folder_is_named_in_one_line(tmp_path, monkeypatch):
    """A research repository's own `backbones/` first on sys.path is imported instead of ours; the config reader
    says so instead of mmengine's "HWT is not in the model registry"."""
    theirs = tmp_path / 'backbones'
    theirs.mkdir()
    (theirs / '__init__.py').write_text('')
    cfg_mod = load_tool('_cfg')
    import backbones  # noqa: F401  ours, so that monkeypatch puts it back afterwards
    for name in [m for m in sys.modules if m == 'backbones' or m.startswith('backbones.')]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(cfg_mod._runtime.ConfigCheckError) as e:
        cfg_mod.read_config(str(DET_CFG))
    assert str(e.value) == (f"'backbones' was imported from {theirs}, not sparsedense's {REPO / 'backbones'}: a "
                            'package of yours with the same name comes first on sys.path and shadows ours; rename it '
                            '(or take its parent folder off PYTHONPATH)')
    assert str(theirs) in cfg_mod.hidden_packages()


def test_a_config_whose_modules_need_a_hidden_backbones_package_is_named_in_one_line(tmp_path):
    """The other way round, through train.py: the tools put this repository first on sys.path, so a research
    repository's `backbones/` (on PYTHONPATH) is hidden and its config's own module fails to import from it."""
    (tmp_path / 'backbones').mkdir()
    (tmp_path / 'backbones' / '__init__.py').write_text('')
    (tmp_path / 'backbones' / 'my_resnet.py').write_text('')
    (tmp_path / 'my_models.py').write_text('from backbones.my_resnet import *  # noqa\n')
    cfg = tmp_path / 'my_config.py'
    cfg.write_text(f"_base_ = '{DET_CFG}'\ncustom_imports = dict(imports=['backbones', 'my_models'])\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    r = subprocess.run([sys.executable, str(TOOLS / 'train.py'), str(cfg)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1] == (
        "error: importing the config's custom_imports failed (No module named 'backbones.my_resnet'): 'backbones' is "
        f"sparsedense's {REPO / 'backbones'}, which hides your {tmp_path / 'backbones'} (two packages cannot share a "
        'name); rename yours')


def test_our_heads_warn_about_a_foreign_backbones_imported_before_them(tmp_path):
    """Any launcher (mmdet's own train.py too): configs import ['backbones', 'heads'], so our heads see which
    `backbones` came first."""
    (tmp_path / 'backbones').mkdir()
    (tmp_path / 'backbones' / '__init__.py').write_text('')
    code = (f'import sys; sys.path.insert(0, {str(tmp_path)!r}); import backbones; '
            f'sys.path.insert(1, {str(REPO)!r}); import heads')
    r = subprocess.run([sys.executable, '-W', 'default::UserWarning', '-c', code], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (f"UserWarning: 'backbones' was imported from {tmp_path / 'backbones'}, not sparsedense's "
            f"{REPO / 'backbones'}: a package of yours with that name comes first on sys.path; rename it if your "
            'config uses HWT / HNT / BiFormer / NAT / DiNAT') in r.stderr
    import importlib
    import warnings
    import backbones  # noqa: F401  ours
    import heads
    with warnings.catch_warnings():
        warnings.simplefilter('error', UserWarning)
        importlib.reload(heads)  # re-runs only heads/__init__.py (the submodules stay imported): no warning


def test_our_packages_pass_the_check():
    cfg_mod = load_tool('_cfg')
    import backbones  # noqa: F401
    import heads  # noqa: F401
    cfg_mod.check_own_packages()
    assert Path(sys.modules['backbones'].__file__).parent == REPO / 'backbones'


def test_a_user_config_elsewhere_inherits_ours_by_path(demo_root, tmp_path, monkeypatch):
    """Tools and configs used from another folder: a config outside the repository inherits ours by its path."""
    mine = tmp_path / 'project' / 'my_upernet.py'
    mine.parent.mkdir()
    mine.write_text(f"_base_ = '{SEG_CFG}'\nmodel = dict(decode_head=dict(channels=32))\n")
    monkeypatch.chdir(mine.parent)
    train = load_tool('train')
    cfg = train.build_cfg(train.parse_args([str(mine), '--cfg-options', f'data_root={demo_root}/data/demo/ade']))
    assert cfg.model.decode_head.channels == 32 and cfg.model.backbone.type == 'HWT'
    assert cfg.train_dataloader.dataset.data_root == f'{demo_root}/data/demo/ade'


# ------------------------------------------------------------------------------------------------- dist scripts
def _copy_scripts(root: Path) -> Path:
    (root / 'tools').mkdir(parents=True)
    for name in ('dist_train.sh', 'dist_test.sh', '_dist_env.sh'):
        shutil.copy(TOOLS / name, root / 'tools' / name)
    return root / 'tools'


@pytest.mark.skipif(torch.cuda.device_count() >= 2, reason='the machine has the CUDA devices DDP needs')
def test_dist_scripts_without_cuda_say_so_in_one_line(tmp_path):
    """A clone without .venv uses the active interpreter (here: the one running the tests, which has torch)."""
    tools = _copy_scripts(tmp_path / 'clone')
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    (bin_dir / 'python3').write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    (bin_dir / 'python3').chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != 'PYTHON'}
    env['PATH'] = f'{bin_dir}:{env["PATH"]}'
    for script, args in (('dist_train.sh', ['cfg.py', '2']), ('dist_test.sh', ['cfg.py', 'ckpt.pth', '2'])):
        r = subprocess.run(['bash', str(tools / script), *args], env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and r.stdout == ''
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith('error: DDP needs CUDA devices: 2 processes asked for, torch '
                                                       f'({bin_dir / "python3"}) sees'), r.stderr


def test_dist_scripts_name_what_the_interpreter_lacks(tmp_path):
    """No .venv and an active interpreter without torch (a fresh venv): one line naming both."""
    tools = _copy_scripts(tmp_path / 'clone')
    bare = tmp_path / 'bare'
    subprocess.run([getattr(sys, '_base_executable', sys.executable), '-m', 'venv', '--without-pip', str(bare)],
                   check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHON', 'PYTHONPATH', 'VIRTUAL_ENV')}
    env['PATH'] = f'{bare / "bin"}:{env["PATH"]}'
    r = subprocess.run(['bash', str(tools / 'dist_train.sh'), 'cfg.py', '1'], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip() == (f'error: {bare / "bin/python3"} (active python; no {tmp_path / "clone"}/.venv) lacks '
                                'torch mmengine mmcv mmdet mmseg: activate an environment with torch and the OpenMMLab '
                                'stack, run tools/setup_env.sh, or set PYTHON=...')
