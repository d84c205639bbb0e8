"""Bad input gives one clear error that names the problem (config key, path, value), before the runner starts."""
from __future__ import annotations

import pytest
import torch

from conftest import DET_CFG, SEG_CFG, load_tool, run_tool

train = load_tool('train')
test = load_tool('test')
rt = train._runtime


def _train_cfg(*argv):
    return train.build_cfg(train.parse_args([str(a) for a in argv]))


def test_missing_data_root_names_key_and_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/ here
    with pytest.raises(rt.ConfigCheckError, match=r"train_dataloader\.dataset\.data_root: directory 'data/demo/coco/'"):
        _train_cfg(DET_CFG, '--work-dir', tmp_path / 'w')
    with pytest.raises(rt.ConfigCheckError, match=r"train_dataloader\.dataset\.data_root: directory 'data/demo/ade'"):
        _train_cfg(SEG_CFG, '--work-dir', tmp_path / 'w')


def test_missing_annotation_file_and_image_folder(demo_root, tmp_path, monkeypatch):
    monkeypatch.chdir(demo_root)
    with pytest.raises(rt.ConfigCheckError,
                       match=r"train_dataloader\.dataset\.ann_file: annotation file 'data/demo/coco/annotations/no"):
        _train_cfg(DET_CFG, '--work-dir', tmp_path / 'w',
                   '--cfg-options', 'train_dataloader.dataset.ann_file=annotations/nope.json')
    with pytest.raises(rt.ConfigCheckError, match=r"val_evaluator\.ann_file: annotation file 'missing\.json'"):
        _train_cfg(DET_CFG, '--work-dir', tmp_path / 'w', '--cfg-options', 'val_evaluator.ann_file=missing.json')
    with pytest.raises(rt.ConfigCheckError,
                       match=r"test_dataloader\.dataset\.data_prefix\.img_path: folder 'data/demo/ade/images/nope'"):
        test.build_cfg(test.parse_args([str(SEG_CFG), str(DET_CFG), '--work-dir', str(tmp_path / 'w'),
                                        '--cfg-options', 'test_dataloader.dataset.data_prefix.img_path=images/nope']))


@pytest.mark.parametrize('option, pattern', [
    ('model.backbone.archh=tiny', r"'model\.backbone\.archh' does not exist.*did you mean arch"),
    ('train_cfg.max_iter=5', r"'train_cfg\.max_iter' does not exist.*did you mean max_iters"),
    ('optim_wrapper.optimizer.lrr=0.1', r"'optim_wrapper\.optimizer\.lrr' does not exist.*did you mean lr"),
    ('modle.backbone.arch=tiny', r"'modle' does not exist.*did you mean model"),
    ('train_dataloader.dataset.pipeline.9.type=Resize', r'list of 5 items, .9. is not an index'),
    ('train_cfg.max_iters.x=1', r'train_cfg\.max_iters is a int, not a dict'),
], ids=['backbone-kwarg', 'loop-kwarg', 'optimizer-kwarg', 'top-level', 'list-index', 'into-scalar'])
def test_unknown_cfg_option_is_named(demo_root, tmp_path, monkeypatch, option, pattern):
    monkeypatch.chdir(demo_root)
    with pytest.raises(rt.ConfigCheckError, match=pattern):
        _train_cfg(DET_CFG, '--work-dir', tmp_path / 'w', '--cfg-options', option)


def test_valid_cfg_options_pass(demo_root, tmp_path, monkeypatch):
    monkeypatch.chdir(demo_root)
    cfg = _train_cfg(DET_CFG, '--work-dir', tmp_path / 'w', '--cfg-options',
                     'model.backbone.with_cp=True',  # not in the config, but HWT accepts it
                     'train_cfg.max_iters=7', 'randomness.seed=3', 'model.backbone.arch.depths=[1,1,1,1]')
    assert cfg.model.backbone.with_cp is True and cfg.train_cfg.max_iters == 7 and cfg.randomness.seed == 3
    assert cfg.model.backbone.arch.depths == [1, 1, 1, 1]
    assert cfg.work_dir == str(tmp_path / 'w')


def test_plain_config_variable_is_refused_because_it_has_no_effect(demo_root, tmp_path, monkeypatch):
    monkeypatch.chdir(demo_root)
    with pytest.raises(rt.ConfigCheckError, match=r"'max_iters' is a variable of the config file.*no effect"):
        _train_cfg(DET_CFG, '--work-dir', tmp_path / 'w', '--cfg-options', 'max_iters=5')


def test_data_root_option_moves_every_dataset_path(demo_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the config's relative data/demo/coco/ does not exist here
    root = demo_root / 'data/demo/coco'
    cfg = _train_cfg(DET_CFG, '--work-dir', tmp_path / 'w', '--cfg-options', f'data_root={root}',
                     'model.backbone.init_cfg.type=Pretrained')  # init_cfg=None may be filled key by key
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        assert cfg[loader].dataset.data_root.rstrip('/') == str(root)
    assert cfg.val_evaluator.ann_file == f'{root}/annotations/instances_val.json' == cfg.test_evaluator.ann_file
    with pytest.raises(rt.ConfigCheckError, match=r"train_dataloader\.dataset\.data_root: directory '/nowhere/coco/'"):
        _train_cfg(DET_CFG, '--work-dir', tmp_path / 'w', '--cfg-options', 'data_root=/nowhere/coco/')


def test_resume_and_checkpoint_paths_are_checked(demo_root, tmp_path, monkeypatch):
    monkeypatch.chdir(demo_root)
    with pytest.raises(rt.ConfigCheckError, match=r"--resume: checkpoint 'nowhere\.pth' does not exist"):
        _train_cfg(DET_CFG, '--resume', 'nowhere.pth')
    with pytest.raises(rt.ConfigCheckError, match=r"checkpoint 'nowhere\.pth' does not exist"):
        test.build_cfg(test.parse_args([str(DET_CFG), 'nowhere.pth']))


def test_cli_prints_one_error_line_without_traceback(tmp_path):
    r = run_tool('train', DET_CFG, '--work-dir', tmp_path / 'w', cwd=tmp_path)
    assert r.returncode == 2
    assert 'Traceback' not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and 'data_root' in errors[0] and 'data/demo/coco/' in errors[0], r.stderr


def test_unknown_arch_is_reported_by_the_tool(demo_root, tmp_path):
    r = run_tool('train', DET_CFG, '--work-dir', tmp_path / 'w', '--cfg-options', 'model.backbone.arch=huge',
                 cwd=demo_root)
    assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr[-3000:]
    err = [line for line in r.stderr.splitlines() if line.startswith('error:')]
    assert len(err) == 1 and 'huge' in err[0] and 'tiny' in err[0], r.stderr[-3000:]


def test_backbone_rejects_wrong_channels_and_dtype():
    from mmengine.registry import MODELS
    import backbones  # noqa: F401  registers HWT
    net = MODELS.build(dict(type='HWT', arch=dict(embed_dims=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                                                  window_size=7, mlp_ratio=2)))
    with pytest.raises(ValueError, match='channel'):
        net(torch.zeros(1, 4, 32, 32))
    with pytest.raises(ValueError, match='dtype'):
        net(torch.zeros(1, 3, 32, 32, dtype=torch.int64))
    assert len(net(torch.zeros(1, 3, 32, 32))) == 4


def test_pretrained_weights_that_cannot_be_had_give_one_line(demo_root, tmp_path):
    """A config whose backbone names official weights that are not on disk and cannot be fetched (a Google Drive
    page): train.py stops at initialisation with one line naming the link and where to put the file, exit 2."""
    cfg = tmp_path / 'pretrained.py'
    cfg.write_text(f"_base_ = '{SEG_CFG}'\n"
                   "model = dict(backbone=dict(init_cfg=dict(type='ConvertedPretrained', convert_from='hwt', "
                   "checkpoint='https://drive.google.com/file/d/0000/view', filename='sd_test_missing.pth')))\n")
    r = run_tool('train', cfg, '--work-dir', tmp_path / 'w', '--cfg-options', 'train_cfg.max_iters=1',
                 cwd=demo_root, env=dict(TORCH_HOME=str(tmp_path / 'hub')))
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith('error: https://drive.google.com/file/d/0000/view is a Google Drive page'), last
    assert str(tmp_path / 'hub') in last and 'Traceback' not in r.stderr
