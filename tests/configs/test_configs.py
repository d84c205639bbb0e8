"""Every config in configs/ (except configs/demo, tested with the tools) parses, matches its file name, builds its
model, and builds train / test dataloaders that yield a batch of the embedded dataset (pointed at it with
cfg-options). Light models (tiny / mini backbones) also run their backbone on a 64 x 64 image and the neck /
decode heads on maps of those shapes, so that stage widths and head inputs agree; heavy ones are built only.
Models and dataloaders shared by several configs (same recipe, same backbone) are checked once per session."""
from __future__ import annotations

import ast
import copy
import functools
import importlib
import importlib.util
import json
import re
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
CONFIGS = sorted(p for p in (REPO / 'configs').rglob('*.py') if p.parts[-2] not in ('demo', 'backbones', 'datasets',
                                                                                     'schedules', 'recipes'))
ALL_FILES = sorted((REPO / 'configs').rglob('*.py'))
BACKBONE_TYPES = {'hwt': 'HWT', 'hnt': 'HNT', 'nat': 'NAT', 'dinat': 'DiNAT', 'biformer': 'BiFormer'}
SIZES = {'t': 'tiny', 's': 'small', 'b': 'base', 'm': 'mini'}
ALGORITHMS = {  # file-name algorithm -> (model type, decode head / neck type that must appear)
    'mask-rcnn': ('MaskRCNN', None), 'cascade-mask-rcnn': ('CascadeRCNN', None), 'retinanet': ('RetinaNet', None),
    'upernet': ('EncoderDecoder', 'UPerHead'), 'fpn': ('EncoderDecoder', 'FPNHead'),
    'upernet-routing': ('EncoderDecoder', 'SparseContextUPerHead'),
    'upernet-hilbert': ('EncoderDecoder', 'SparseContextUPerHead'),
}
DET_CLASSES = ('circle', 'square', 'triangle', 'star')
# configs/hwt/{mask-rcnn 1x, upernet 512} of HWT-T belong to the foundation; the S / B deltas inherit them
FOUNDATION_DERIVED = {f'mask-rcnn_hwt-{s}_fpn_1x_coco' for s in 'tsb'} | {
    f'upernet_hwt-{s}_8xb2-160k_ade20k-512x512' for s in 'tsb'} | {'upernet_hwt-t_8xb2-40k_coco-things-512x512'}


def _cid(p: Path) -> str:
    return f'{p.parent.name}/{p.stem}'


# ------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope='module')
def demo_data(tmp_path_factory) -> Path:
    """The embedded dataset (64 px, 4 train + 2 val images) written by tools/make_demo_data.py."""
    spec = importlib.util.spec_from_file_location('sparsedense_tools_make_demo_data', REPO / 'tools/make_demo_data.py')
    mdd = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mdd  # dataclasses look their module up
    spec.loader.exec_module(mdd)
    root = tmp_path_factory.mktemp('configs_data') / 'demo'
    mdd.make_demo_data(root, mdd.Params(size=64, num_train=4, num_val=2))
    return root


def data_options(scope: str, root: Path) -> dict:
    """cfg-options that point every dataloader (and the COCO evaluators) at the embedded dataset, no workers."""
    opts = {}
    for phase, split in (('train', 'train'), ('val', 'val'), ('test', 'val')):
        key = f'{phase}_dataloader'
        opts.update({f'{key}.num_workers': 0, f'{key}.persistent_workers': False})
        if scope == 'mmdet':
            opts.update({f'{key}.dataset.data_root': f'{root}/coco/',
                         f'{key}.dataset.ann_file': f'annotations/instances_{split}.json',
                         f'{key}.dataset.data_prefix': dict(img=f'{split}/'),
                         f'{key}.dataset.metainfo': dict(classes=DET_CLASSES)})
        else:
            folder = 'training' if split == 'train' else 'validation'
            opts.update({f'{key}.dataset.data_root': f'{root}/ade',
                         f'{key}.dataset.data_prefix': dict(img_path=f'images/{folder}',
                                                            seg_map_path=f'annotations/{folder}')})
    if scope == 'mmdet':
        opts.update({'val_evaluator.ann_file': f'{root}/coco/annotations/instances_val.json',
                     'test_evaluator.ann_file': f'{root}/coco/annotations/instances_val.json'})
    return opts


_CACHE: dict[str, object] = {}


def once(key: str, fn):
    """Run fn once per key for the session; later calls return (or re-raise) the first outcome."""
    if key not in _CACHE:
        try:
            _CACHE[key] = ('ok', fn())
        except Exception as e:  # noqa: BLE001  re-raised for every config that shares the key
            _CACHE[key] = ('err', e)
    status, value = _CACHE[key]
    if status == 'err':
        raise value
    return value


def _key(node) -> str:
    return json.dumps(node, sort_keys=True, default=str)


@pytest.fixture(scope='module', autouse=True)
def parse_metafiles_once():
    """mmengine resolves every `mmdet::` / `mmseg::` base by first parsing all ~400 metafile YAMLs of the package
    (about 0.4 s per reference, 4 references per config): parse each YAML once for this module."""
    import mmengine.config.utils as cfg_utils
    original = cfg_utils.load
    cached = functools.lru_cache(maxsize=None)(original)

    def load(file, *args, **kwargs):
        if not args and not kwargs and str(file).endswith(('.yml', '.yaml')):
            return cached(file)
        return original(file, *args, **kwargs)

    cfg_utils.load = load
    yield
    cfg_utils.load = original


@functools.lru_cache(maxsize=None)
def _load(path: Path):
    from mmengine.config import Config
    cfg = Config.fromfile(str(path))
    scope = cfg.get('default_scope')
    assert scope in ('mmdet', 'mmseg'), f'default_scope {scope!r}'
    importlib.import_module(f'{scope}.utils').register_all_modules(init_default_scope=False)
    return cfg, scope


def load(path: Path):
    """(a private copy of the parsed config, its scope); each file is parsed once per session."""
    cfg, scope = _load(path)
    return copy.deepcopy(cfg), scope


# ------------------------------------------------------------------------------------------------- static checks
@pytest.mark.parametrize('path', ALL_FILES, ids=[_cid(p) for p in ALL_FILES])
def test_no_top_level_import(path):
    """mmengine's lazy-import handling breaks old-style configs with `import` on Python >= 3.11."""
    tree = ast.parse(path.read_text())
    assert not [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]


@pytest.mark.parametrize('path', CONFIGS, ids=[_cid(p) for p in CONFIGS])
def test_config_matches_its_name(path):
    """Algorithm, backbone type and size, schedule, batch and resolution in the file name are what the config says."""
    cfg, scope = load(path)
    m = cfg.model
    parts = path.stem.split('_')
    algo, backbone = parts[0], parts[1]
    assert cfg.custom_imports.allow_failed_imports is False and 'backbones' in cfg.custom_imports.imports
    model_type, head_type = ALGORITHMS[algo]
    assert m.type == model_type
    if head_type:
        assert head_type in (m.decode_head.type, m.get('neck', {}).get('type'))
    if any('SparseContext' in str(n) for n in (m.get('neck'), m.get('decode_head'))):
        assert 'heads' in cfg.custom_imports.imports
    name, _, size = backbone.rpartition('-')
    if size != 'demo':
        assert m.backbone.type == BACKBONE_TYPES[name] and m.backbone.arch == SIZES[size]
        assert 'depth' not in m.backbone and 'num_stages' not in m.backbone, 'ResNet keys leaked (_delete_?)'
    stem = path.stem
    if re.search(r'_(ms-crop-)?3x_', stem):
        assert cfg.train_cfg.max_epochs == 36
    elif '_1x_' in stem:
        assert cfg.train_cfg.max_epochs == 12
    if 'ms-crop' in stem:
        assert any(t.type == 'RandomChoice' for t in cfg.train_dataloader.dataset.pipeline)
    for iters in ('160k', '80k'):
        if f'-{iters}_' in stem:
            assert cfg.train_cfg.max_iters == int(iters[:-1]) * 1000
    batch = re.search(r'_8xb(\d+)-', stem)
    if batch:
        assert cfg.train_dataloader.batch_size == int(batch.group(1))
    crop = re.search(r'ade20k-(\d+)x(\d+)$', stem)
    if crop:
        assert tuple(m.data_preprocessor.size) == (int(crop.group(1)), int(crop.group(2)))
        assert any(t.type == 'RandomCrop' and tuple(t.crop_size) == tuple(m.data_preprocessor.size)
                   for t in cfg.train_dataloader.dataset.pipeline)
        if int(crop.group(1)) >= 1024:
            assert m.test_cfg.mode == 'slide'
    if stem.endswith('coco-2048'):
        scales = [t.scale for t in cfg.test_dataloader.dataset.pipeline if t.type == 'Resize']
        assert scales and max(scales[0]) == 2048


# the official ImageNet checkpoints the source works released (HWT: tiny only)
RELEASED = {('HWT', 'tiny'), ('HNT', 'mini'), ('HNT', 'tiny'), ('BiFormer', 'tiny'), ('BiFormer', 'small'),
            ('BiFormer', 'base')} | {(t, a) for t in ('NAT', 'DiNAT') for a in ('mini', 'tiny', 'small', 'base')}


@pytest.mark.parametrize('path', CONFIGS, ids=[_cid(p) for p in CONFIGS])
def test_zoo_config_names_the_official_imagenet_checkpoint(path):
    """Like mmdet's Swin configs: the backbone starts from the official ImageNet weights of its size, converted
    (building the model does not read them: only init_weights does)."""
    cfg, _ = load(path)
    backbone = cfg.model.backbone
    if path.stem.split('_')[1].endswith('-demo'):
        return
    init = backbone.get('init_cfg')
    if (backbone.type, backbone.arch) not in RELEASED:
        assert init is None
        return
    assert init.type == 'ConvertedPretrained' and init.convert_from == backbone.type.lower()
    assert init.checkpoint.startswith('https://')
    name = init.get('filename') or init.checkpoint.rsplit('/', 1)[-1]
    assert backbone.arch in name, (name, backbone.arch)


@pytest.mark.parametrize('path', CONFIGS, ids=[_cid(p) for p in CONFIGS])
def test_zoo_recipe_is_amp_adamw_without_decay_on_norms_and_biases(path):
    """Configs built on our recipes use AmpOptimWrapper + AdamW with zero weight decay on norms and position bias."""
    cfg, _ = load(path)
    ow = cfg.optim_wrapper
    if '_hwt-demo_' in path.name:
        # heads compared on the embedded dataset: the CPU demo recipe of configs/demo, unchanged
        suffix = path.name.split('_')[-1]
        demo = [p for p in (REPO / 'configs' / 'demo').glob('*.py') if p.name.split('_')[-1] == suffix]
        assert len(demo) == 1 and load(demo[0])[0].optim_wrapper.to_dict() == ow.to_dict()
        return
    assert ow.type == 'AmpOptimWrapper' and ow.optimizer.type == 'AdamW'
    keys = ow.paramwise_cfg.get('custom_keys', {})
    if path.parent.name == 'heads' or path.stem in FOUNDATION_DERIVED:
        # the foundation HWT configs state Swin's recipe literally: 'norm' and the HWT bias table by key
        assert keys['norm']['decay_mult'] == 0.0
        assert keys['relative_position_bias_table']['decay_mult'] == 0.0
        return
    assert ow.paramwise_cfg.norm_decay_mult == 0.0
    assert {'rpb', 'relative_position_bias_table'} <= set(keys)


# ------------------------------------------------------------------------------------------------- builds
@contextmanager
def zero_random_init():
    """Random weight initialisation (PyTorch defaults, trunc_normal_) fills with zeros while building: the values do
    not matter to these checks and drawing ~100 M random numbers per model dominated the build time."""
    saved = {name: getattr(torch.Tensor, name) for name in ('uniform_', 'normal_', 'erfinv_')}
    torch.Tensor.uniform_ = torch.Tensor.normal_ = lambda self, *args, **kwargs: self.zero_()
    torch.Tensor.erfinv_ = lambda self: self  # erfinv(0) = 0
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)


def _build_model(cfg, scope):
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import MODELS, DefaultScope
    with DefaultScope.overwrite_default_scope(scope), zero_random_init():
        return revert_sync_batchnorm(MODELS.build(cfg.model))


def _light(path: Path) -> bool:
    backbone = path.stem.split('_')[1]
    return backbone.endswith(('-t', '-m'))


def _backbone_shapes(model, backbone_key: str) -> list:
    """Output shapes of the backbone on one 64 x 64 image, computed once per backbone config."""
    def run():
        model.eval()
        with torch.no_grad():
            return [f.shape for f in model.backbone(torch.randn(1, 3, 64, 64))]
    return once('backbone:' + backbone_key, run)


def _check_forward(model, scope, backbone_key: str):
    """Neck (mmdet) or neck + decode / auxiliary heads (mmseg) on maps shaped like the backbone's outputs, so stage
    widths and head inputs must agree."""
    model.eval()
    with torch.no_grad():
        feats = [torch.randn(s) for s in _backbone_shapes(model, backbone_key)]
        if getattr(model, 'neck', None) is not None:
            feats = model.neck(feats)
        if scope == 'mmdet':
            assert all(f.shape[1] == model.neck.out_channels for f in feats)
        else:
            assert model.decode_head.forward(feats).shape[:2] == (1, model.decode_head.num_classes)
            if getattr(model, 'auxiliary_head', None) is not None:
                model.auxiliary_head.forward(feats)


def _check_optimizer(model, cfg):
    """The backbone's norm layers and relative position biases get no weight decay; conv / linear weights do
    (head norms follow the recipe: our recipes exempt every norm, the Swin-style foundation configs only names
    containing 'norm')."""
    from mmengine.optim import build_optim_wrapper
    ow_cfg = cfg.optim_wrapper.copy()
    ow_cfg['type'] = 'OptimWrapper'  # AmpOptimWrapper needs CUDA; the parameter groups are the same
    ow_cfg.pop('loss_scale', None)
    optim = build_optim_wrapper(model, ow_cfg).optimizer
    decay = {id(p): g['weight_decay'] for g in optim.param_groups for p in g['params']}
    norm_types = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.modules.batchnorm._BatchNorm)
    norm_params = {id(p) for mod in model.backbone.modules() if isinstance(mod, norm_types) for p in mod.parameters()}
    bias_names = [n for n, p in model.named_parameters() if 'rpb' in n or 'relative_position_bias_table' in n]
    for n, p in model.named_parameters():
        if id(p) in norm_params or n in bias_names:
            assert decay[id(p)] == 0.0, f'{n} is decayed'
    assert any(decay[id(p)] > 0 for n, p in model.named_parameters() if n.endswith('weight') and p.ndim >= 2)
    if model.backbone.__class__.__name__ in ('HWT', 'NAT', 'DiNAT', 'HNT'):
        assert bias_names, 'no relative position bias found by name: the no-decay keys do not match'


@pytest.mark.parametrize('path', CONFIGS, ids=[_cid(p) for p in CONFIGS])
def test_config_builds_model_and_dataloaders(path, demo_data):
    from mmengine.registry import DefaultScope
    from mmengine.runner import Runner
    cfg, scope = load(path)

    def check_model():  # the model is not kept: ~50 distinct models would hold gigabytes
        model = _build_model(cfg, scope)
        if _light(path):  # stage widths vs neck / head inputs, once per model structure
            structure = _key({k: cfg.model.get(k) for k in ('backbone', 'neck', 'decode_head', 'auxiliary_head')})
            once('forward:' + structure, lambda: _check_forward(model, scope, _key(cfg.model.backbone)))
        _check_optimizer(model, cfg)

    once('model:' + _key(cfg.model) + _key(cfg.optim_wrapper), check_model)

    cfg.merge_from_dict(data_options(scope, demo_data))
    for phase in ('train', 'test'):
        loader_cfg = cfg.get(f'{phase}_dataloader')

        def build_loader():
            with DefaultScope.overwrite_default_scope(scope):
                loader = Runner.build_dataloader(loader_cfg, seed=0)
                batch = next(iter(loader))
            assert 1 <= len(batch['inputs']) <= loader_cfg.batch_size
            img = batch['inputs'][0]
            assert img.ndim == 3 and img.shape[0] == 3 and img.dtype == torch.uint8
            sample = batch['data_samples'][0]
            if phase == 'train':
                assert ('gt_instances' in sample) if scope == 'mmdet' else ('gt_sem_seg' in sample)
            return True

        once(f'{phase}:' + _key(loader_cfg), build_loader)
