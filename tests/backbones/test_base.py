"""SparseBackbone helpers: argument validation, freezing, norm_eval, checkpointing, input checks, arch resolution."""
import pytest
import torch
from torch import nn

from _checks import assert_checkpointed_equals_plain
from backbones.base import (MODELS, SparseBackbone, checkpoint_call, drop_path_schedule, resolve_arch,
                            validate_out_indices)


class ToyBackbone(SparseBackbone):
    """Stem conv + BN, two stages (conv + BN + downsample conv); not registered."""

    def __init__(self, **kwargs):
        kwargs.setdefault('out_indices', (0, 1))
        super().__init__(num_stages=2, **kwargs)
        self.stem = nn.Sequential(nn.Conv2d(self.in_channels, 4, 3, padding=1), nn.BatchNorm2d(4))
        self.stages = nn.ModuleList(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)) for _ in range(2))
        self.downsample = nn.Conv2d(4, 4, 2, stride=2)
        self._freeze_stages()

    def _stem_modules(self):
        return [self.stem]

    def _stage_modules(self, i):
        return [self.stages[i]] + ([self.downsample] if i == 0 else [])

    def _forward(self, x):
        x = self.stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = self.checkpointed(stage, x)
            outs.append(x)
            if i == 0:
                x = self.downsample(x)
        return tuple(outs[i] for i in self.out_indices)


def test_registry_is_mmengine_root():
    import mmengine.registry
    assert MODELS is mmengine.registry.MODELS


@pytest.mark.parametrize('given, expected', [((0, 1, 2, 3), (0, 1, 2, 3)), ((3, 1), (1, 3)), (2, (2,)),
                                             ((-1,), (3,)), ([0, -1], (0, 3))])
def test_validate_out_indices(given, expected):
    assert validate_out_indices(given, 4) == expected


@pytest.mark.parametrize('bad', [(), (4,), (-5,), (1, 1), (1, -3), (0.5,), 'ab', (True,), None])
def test_validate_out_indices_rejects(bad):
    with pytest.raises(ValueError, match='out_indices'):
        validate_out_indices(bad, 4)


PRESETS = {'a': dict(dims=8, depths=(1, 2)), 'b': dict(dims=16, depths=(2, 2))}


def test_resolve_arch_by_name_is_a_copy():
    arch = resolve_arch('a', PRESETS)
    assert arch == dict(dims=8, depths=(1, 2))
    arch['dims'] = 1
    assert PRESETS['a']['dims'] == 8


def test_resolve_arch_unknown_name_lists_valid():
    with pytest.raises(KeyError, match=r"\['a', 'b'\]"):
        resolve_arch('huge', PRESETS)


def test_resolve_arch_dict_validation_and_defaults():
    assert resolve_arch(dict(dims=4, depths=(1,)), PRESETS, defaults=dict(rate=0.1)) == \
        dict(dims=4, depths=(1,), rate=0.1)
    assert resolve_arch(dict(dims=4, depths=(1,), rate=0.3), PRESETS, defaults=dict(rate=0.1))['rate'] == 0.3
    with pytest.raises(ValueError, match='depths'):
        resolve_arch(dict(dims=4), PRESETS)
    with pytest.raises(ValueError, match='unknown keys'):
        resolve_arch(dict(dims=4, depths=(1,), dimz=3), PRESETS)
    with pytest.raises(ValueError, match='preset name'):
        resolve_arch(3, PRESETS)


def test_drop_path_schedule():
    rates = drop_path_schedule(0.3, (1, 2, 1))
    assert [len(r) for r in rates] == [1, 2, 1]
    flat = [r for stage in rates for r in stage]
    assert flat[0] == 0.0 and flat[-1] == pytest.approx(0.3)
    assert flat == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert drop_path_schedule(0.0, (2,)) == [[0.0, 0.0]]
    with pytest.raises(ValueError, match='drop_path_rate'):
        drop_path_schedule(1.0, (2,))


def test_checkpoint_call_same_values_and_grads():
    layer = nn.Linear(3, 3)
    x = torch.randn(2, 3, requires_grad=True)
    plain = checkpoint_call(layer, x, enabled=False)
    plain.sum().backward()
    g_plain = (x.grad.clone(), layer.weight.grad.clone())
    x.grad = None
    layer.weight.grad = None
    cp = checkpoint_call(layer, x, enabled=True)
    assert cp.grad_fn is not None
    torch.testing.assert_close(cp, plain)
    cp.sum().backward()
    torch.testing.assert_close((x.grad, layer.weight.grad), g_plain)


@pytest.mark.parametrize('kwargs, match', [(dict(frozen_stages=3), 'frozen_stages'),
                                           (dict(frozen_stages=-2), 'frozen_stages'),
                                           (dict(in_channels=0), 'in_channels'),
                                           (dict(norm_eval=1), 'norm_eval'),
                                           (dict(with_cp='yes'), 'with_cp'),
                                           (dict(out_indices=(2,)), 'out_indices')])
def test_constructor_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ToyBackbone(**kwargs)


def test_frozen_stages_freeze_stem_and_stages():
    model = ToyBackbone(frozen_stages=1)
    model.train()
    for module in (model.stem, model.stages[0], model.downsample):
        assert not module.training
        assert all(not p.requires_grad for p in module.parameters())
    assert model.stages[1].training
    assert all(p.requires_grad for p in model.stages[1].parameters())
    model.eval()
    model.train()  # re-freezing survives a train() call
    assert not model.stem[1].training and model.stages[1][1].training


def test_frozen_stages_zero_freezes_only_stem():
    model = ToyBackbone(frozen_stages=0)
    model.train()
    assert all(not p.requires_grad for p in model.stem.parameters())
    assert all(p.requires_grad for p in model.stages.parameters())


def test_norm_eval_keeps_batchnorm_in_eval():
    model = ToyBackbone(norm_eval=True)
    model.train()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not bn.training for bn in bns)
    assert model.stages[1][0].training  # only norms are affected
    stats = model.stages[1][1].running_mean.clone()
    model(torch.randn(2, 3, 8, 8))
    torch.testing.assert_close(model.stages[1][1].running_mean, stats)
    assert all(bn.training for bn in ToyBackbone(norm_eval=False).train().modules()
               if isinstance(bn, nn.BatchNorm2d))


def test_with_cp_matches_plain():
    torch.manual_seed(0)
    plain, cp = ToyBackbone(), ToyBackbone(with_cp=True)
    cp.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 8, 8)
    assert_checkpointed_equals_plain(plain, cp, x)


@pytest.mark.parametrize('x, match', [
    (torch.zeros(3, 8, 8), 'ndim=3'),
    (torch.zeros(1, 4, 8, 8), '3 input channels'),
    (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), 'floating-point'),
    (torch.zeros(1, 3, 8, 8, dtype=torch.int64), 'dtype=torch.int64'),
    (torch.zeros(1, 3, 0, 8), 'H, W >= 1'),
    ([[1.0]], 'torch.Tensor'),
])
def test_check_input(x, match):
    with pytest.raises(ValueError, match=match):
        ToyBackbone()(x)
