"""Converter plumbing (unwrap / prefixes / bias-table resize / loud loading), the HWT converter on a synthetic
official state dict, the ConvertedPretrained initializer and tools/convert_checkpoint.py."""
import importlib.util
import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from backbones.converters import FORMATS, get_converter
from backbones.converters.common import (adapt_rpb_tables, load_converted, resize_rpb, select_prefix,
                                         strip_prefixes, unwrap_checkpoint)
from backbones.converters.hwt import convert as convert_hwt
from backbones.converters.hwt import convert_rpb_table
from backbones.hwt import HWT, HWT_PRESETS

ROOT = Path(__file__).resolve().parents[2]


# --- generic plumbing ------------------------------------------------------------------------------------------
def test_unwrap_checkpoint():
    sd = {'a.weight': torch.zeros(2)}
    assert unwrap_checkpoint(sd) == sd
    assert unwrap_checkpoint({'state_dict': sd, 'meta': {'epoch': 3}}) == sd
    assert unwrap_checkpoint({'model': sd, 'optimizer': {'x': 1}, 'epoch': 300}) == sd
    assert unwrap_checkpoint({'state_dict': {'model': sd}}) == sd
    with pytest.raises(ValueError, match='no tensors'):
        unwrap_checkpoint({'epoch': 3})


def test_strip_and_select_prefixes():
    t = torch.zeros(1)
    assert strip_prefixes({'module.backbone.a': t, 'module.backbone.b': t}) == {'a': t, 'b': t}
    assert strip_prefixes({'model.a': t, 'head.b': t}) == {'model.a': t, 'head.b': t}  # not all keys: kept
    assert select_prefix({'backbone.a': t, 'neck.b': t}, 'backbone') == {'a': t}
    with pytest.raises(ValueError, match='no key starts with'):
        select_prefix({'neck.b': t}, 'backbone.')


def test_resize_rpb():
    table = torch.randn(3, 13, 13)
    assert resize_rpb(table, 13) is table
    big = resize_rpb(table, (25, 25))
    assert big.shape == (3, 25, 25)
    torch.testing.assert_close(big[:, ::2, ::2], table, atol=1e-5, rtol=1e-5)  # grid points keep their values
    torch.testing.assert_close(resize_rpb(torch.full((2, 5, 5), 0.7), 9), torch.full((2, 9, 9), 0.7))
    small = resize_rpb(table, 7)
    torch.testing.assert_close(small[:, 3, 3], table[:, 6, 6])  # zero offset stays at the centre
    torch.testing.assert_close(small[:, 0, 6], table[:, 0, 12])  # extreme offsets stay at the corners
    assert resize_rpb(table.half(), 7).dtype == torch.float16
    line = resize_rpb(torch.arange(5.0).repeat(2, 1), 9)  # 1D tables (HNT) resize linearly
    torch.testing.assert_close(line, torch.arange(9.0).repeat(2, 1) / 2)
    with pytest.raises(ValueError, match='heads, Sh, Sw'):
        resize_rpb(torch.zeros(13), 7)
    with pytest.raises(ValueError, match='does not fit'):
        resize_rpb(table, (7, 7, 7))


class Tiny(nn.Module):
    def __init__(self, r=3):
        super().__init__()
        self.fc = nn.Linear(2, 2)
        self.attn = nn.Module()
        self.attn.rpb = nn.Parameter(torch.zeros(2, 2 * r - 1, 2 * r - 1))


def test_load_converted_reports_every_key(caplog):
    model = Tiny()
    sd = {'fc.weight': torch.ones(2, 2), 'fc.bias': torch.ones(3), 'extra.one': torch.zeros(1),
          'extra.two': torch.zeros(1)}
    with caplog.at_level(logging.WARNING):
        result = load_converted(model, sd, logger=logging.getLogger('t'))
    assert result.loaded == ['fc.weight']
    assert sorted(result.missing) == ['attn.rpb', 'fc.bias']
    assert sorted(result.unexpected) == ['extra.one', 'extra.two']
    assert result.mismatched == [('fc.bias', (3,), (2,))]
    text = caplog.text
    for key in ('attn.rpb', 'extra.one', 'extra.two', 'fc.bias'):
        assert key in text
    torch.testing.assert_close(model.fc.weight, torch.ones(2, 2))


def test_load_converted_raises_when_nothing_matches_or_strict():
    with pytest.raises(RuntimeError, match='no key of the checkpoint matches'):
        load_converted(Tiny(), {'something.else': torch.zeros(1)})
    with pytest.raises(RuntimeError, match='strict load failed'):
        load_converted(Tiny(), {'fc.weight': torch.ones(2, 2)}, strict=True)


def test_load_converted_resizes_bias_tables_only_when_asked():
    model = Tiny(r=4)  # (2, 7, 7)
    table = torch.randn(2, 5, 5)
    sd = {'attn.rpb': table, 'fc.weight': torch.ones(2, 2), 'fc.bias': torch.ones(2)}
    with pytest.raises(RuntimeError, match='1 shape-mismatched'):
        load_converted(model, sd, strict=True)
    result = load_converted(model, sd, logger=logging.getLogger('t'), resize_tables=True, strict=True)
    assert 'attn.rpb' in result.loaded and not result.mismatched
    assert result.resized == (('attn.rpb', (2, 5, 5), (2, 7, 7)),)
    torch.testing.assert_close(model.attn.rpb.data, resize_rpb(table, 7))
    # a head-count mismatch is not resized but reported
    assert adapt_rpb_tables({'attn.rpb': torch.zeros(3, 5, 5)}, model.state_dict())['attn.rpb'].shape == (3, 5, 5)


def test_get_converter():
    assert get_converter('hwt') is convert_hwt
    with pytest.raises(ValueError, match='unknown checkpoint format'):
        get_converter('swin')
    assert set(FORMATS) == {'biformer', 'nat', 'dinat', 'hwt', 'hnt'}


# --- HWT: synthetic official checkpoint ---------------------------------------------------------------------------
def official_hwt_state_dict(embed_dims, depths, num_heads, window_size, mlp_ratio, img_size=224, num_classes=1000,
                            **_):
    """Keys and shapes of the official Hilbert-Local-Attention ``hwt.py`` SwinTransformer (random values)."""
    g = torch.Generator().manual_seed(0)
    sd = {}

    def add(key, *shape):
        sd[key] = torch.randn(*shape, generator=g)

    add('patch_embed.proj.weight', embed_dims, 3, 4, 4)
    add('patch_embed.proj.bias', embed_dims)
    add('patch_embed.norm.weight', embed_dims)
    add('patch_embed.norm.bias', embed_dims)
    res = img_size // 4
    for i, (depth, heads) in enumerate(zip(depths, num_heads)):
        c, hidden = embed_dims * 2 ** i, int(embed_dims * 2 ** i * mlp_ratio)
        for j in range(depth):
            p = f'layers.{i}.blocks.{j}.'
            for norm in ('norm1', 'norm2'):
                add(p + norm + '.weight', c)
                add(p + norm + '.bias', c)
            add(p + 'attn.relative_position_bias_table', (2 * res - 1) ** 2, heads)
            add(p + 'attn.qkv.weight', 3 * c, c)
            add(p + 'attn.qkv.bias', 3 * c)
            add(p + 'attn.proj.weight', c, c)
            add(p + 'attn.proj.bias', c)
            add(p + 'mlp.fc1.weight', hidden, c)
            add(p + 'mlp.fc1.bias', hidden)
            add(p + 'mlp.fc2.weight', c, hidden)
            add(p + 'mlp.fc2.bias', c)
            if j % 2 == 1 and res > window_size:  # official: shifted blocks keep a mask buffer
                sd[p + 'attn_mask'] = torch.zeros(res * res // window_size ** 2, window_size ** 2, window_size ** 2)
        if i < len(depths) - 1:
            add(f'layers.{i}.downsample.reduction.weight', 2 * c, 4 * c)
            add(f'layers.{i}.downsample.norm.weight', 4 * c)
            add(f'layers.{i}.downsample.norm.bias', 4 * c)
            res //= 2
    last = embed_dims * 2 ** (len(depths) - 1)
    add('norm.weight', last)
    add('norm.bias', last)
    add('head.weight', num_classes, last)
    add('head.bias', num_classes)
    return sd


def test_convert_rpb_table_semantics():
    heads, side, ws, r = 2, 2 * 28 - 1, 7, 48
    table = torch.randn(side * side, heads)
    ours = convert_rpb_table(table, ws)
    assert ours.shape == (heads, 2 * r + 1, 2 * r + 1)
    official = table.t().reshape(heads, side, side)  # index (q - k) + H - 1
    for dy, dx in [(0, 0), (1, -2), (-6, 6), (13, -9), (27, -27)]:  # our offset is key - query
        torch.testing.assert_close(ours[:, dy + r, dx + r], official[:, -dy + 27, -dx + 27])
    torch.testing.assert_close(ours[:, 40 + r, -30 + r], official[:, 0, 54])  # beyond +-27: nearest entry
    small = convert_rpb_table(torch.randn(9, heads), ws)  # 2x2 stage: 3x3 grid, the nearest entry repeats
    assert small.shape == (heads, 97, 97)
    torch.testing.assert_close(small[:, 0, 0], small[:, r - 1, r - 1])
    with pytest.raises(ValueError, match='square'):
        convert_rpb_table(torch.randn(3 * 5, heads), ws)


@pytest.mark.parametrize('name', sorted(HWT_PRESETS))
def test_hwt_converter_round_trip_presets(name):
    official = official_hwt_state_dict(**HWT_PRESETS[name])
    converted = convert_hwt(official)
    assert not any(k.startswith('head.') or k.endswith('attn_mask') for k in converted)
    # the official model has one final norm: with out_indices=(3,) every key matches both ways
    model = HWT(arch=name, out_indices=(3,))
    result = load_converted(model, converted, strict=True)
    assert not result.missing and not result.unexpected and not result.mismatched
    torch.testing.assert_close(model.layers[2].blocks[3].attn.qkv.weight,
                               official['layers.2.blocks.3.attn.qkv.weight'])
    torch.testing.assert_close(model.norm3.weight, official['norm.weight'])
    table = model.layers[0].blocks[1].attn.relative_position_bias_table
    key = 'layers.0.blocks.1.attn.relative_position_bias_table'
    torch.testing.assert_close(table, convert_rpb_table(official[key]))


def test_hwt_converter_all_outputs_reports_extra_norms():
    # with all four outputs, only the extra output norms of stages 0-2 keep their initial values
    result = load_converted(HWT(arch=TINY), convert_hwt(official_hwt_state_dict(**TINY)))
    assert sorted(result.missing) == sorted(f'norm{i}.{p}' for i in range(3) for p in ('weight', 'bias'))
    assert not result.unexpected and not result.mismatched


TINY = dict(embed_dims=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=7, mlp_ratio=2.0)


def test_converted_pretrained_init(tmp_path):
    official = official_hwt_state_dict(**TINY)
    path = tmp_path / 'hwt_official.pth'
    torch.save({'model': {'module.' + k: v for k, v in official.items()}, 'epoch': 300}, path)
    model = HWT(arch=TINY, init_cfg=dict(type='ConvertedPretrained', checkpoint=str(path), convert_from='hwt'))
    model.init_weights()
    torch.testing.assert_close(model.patch_embed.proj.weight, official['patch_embed.proj.weight'])
    torch.testing.assert_close(model.layers[1].downsample.reduction.weight,
                               official['layers.1.downsample.reduction.weight'])
    torch.testing.assert_close(model.layers[3].blocks[0].attn.relative_position_bias_table,
                               convert_rpb_table(official['layers.3.blocks.0.attn.relative_position_bias_table']))
    outs = model(torch.randn(1, 3, 32, 32))
    assert len(outs) == 4


def test_converted_pretrained_prefix_and_errors(tmp_path):
    official = official_hwt_state_dict(**TINY)
    path = tmp_path / 'det.pth'
    torch.save({'state_dict': {**{'backbone.' + k: v for k, v in official.items()}, 'neck.x': torch.zeros(1)}}, path)
    model = HWT(arch=TINY, init_cfg=dict(type='ConvertedPretrained', checkpoint=str(path), convert_from='hwt',
                                         prefix='backbone'))
    model.init_weights()
    torch.testing.assert_close(model.norm3.bias, official['norm.bias'])
    with pytest.raises(FileNotFoundError, match='not found'):
        HWT(arch=TINY, init_cfg=dict(type='ConvertedPretrained', checkpoint=str(tmp_path / 'nope.pth'),
                                     convert_from='hwt')).init_weights()
    from backbones.converters.init import ConvertedPretrained
    with pytest.raises(ValueError, match='convert_from'):
        ConvertedPretrained(checkpoint=str(path), convert_from='swin')


def test_converted_pretrained_refuses_pickled_objects(tmp_path):
    from backbones.converters.init import load_official_checkpoint
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'a': torch.zeros(1)}, 'obj': Tiny()}, path)
    with pytest.raises(ValueError, match='weights_only'):
        load_official_checkpoint(str(path))


# --- tools/convert_checkpoint.py ------------------------------------------------------------------------------------
def load_tool():
    spec = importlib.util.spec_from_file_location('convert_checkpoint', ROOT / 'tools' / 'convert_checkpoint.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_convert_checkpoint_tool(tmp_path, capsys):
    official = official_hwt_state_dict(**TINY)
    src, dst = tmp_path / 'in.pth', tmp_path / 'out.pth'
    torch.save({'model': official}, src)
    assert load_tool().main(['--from', 'hwt', str(src), str(dst), '--arch', repr(TINY)]) == 0
    out = capsys.readouterr().out
    converted = convert_hwt(official)
    assert f'read {len(official)} tensors, wrote {len(converted)} tensors' in out
    assert 'missing 6 (documented), resized 0' in out  # norm0-2: the extra output norms
    saved = torch.load(dst, weights_only=True)
    assert set(saved) == {'state_dict'} and set(saved['state_dict']) == set(converted)
    model = HWT(arch=TINY, init_cfg=dict(type='Pretrained', checkpoint=str(dst)))
    model.init_weights()
    torch.testing.assert_close(model.layers[0].blocks[0].attn.qkv.bias, official['layers.0.blocks.0.attn.qkv.bias'])


def test_convert_checkpoint_tool_errors(tmp_path, capsys):
    tool = load_tool()
    assert tool.main(['--from', 'hwt', str(tmp_path / 'missing.pth'), str(tmp_path / 'out.pth')]) == 2
    assert 'input checkpoint not found' in capsys.readouterr().err
    src = tmp_path / 'in.pth'
    torch.save({'a': torch.zeros(1)}, src)
    assert tool.main(['--from', 'hwt', str(src), str(tmp_path / 'no_dir' / 'out.pth')]) == 2
    assert 'output directory does not exist' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.main(['--from', 'swin', str(src), str(tmp_path / 'out.pth')])
    assert 'invalid choice' in capsys.readouterr().err


def test_convert_checkpoint_tool_refuses_mismatched_shapes(tmp_path, capsys):
    """A checkpoint whose shapes do not fit the --arch exits 1 and writes nothing."""
    official = official_hwt_state_dict(**dict(TINY, embed_dims=16))
    src, dst = tmp_path / 'in.pth', tmp_path / 'out.pth'
    torch.save({'model': official}, src)
    assert load_tool().main(['--from', 'hwt', str(src), str(dst), '--arch', repr(TINY)]) == 1
    assert 'does not fit' in capsys.readouterr().err
    assert not dst.exists() and not (tmp_path / 'out.pth.tmp').exists()


def test_convert_checkpoint_help_names_the_official_files(capsys):
    with pytest.raises(SystemExit):
        load_tool().parse_args(['--help'])
    out = capsys.readouterr().out
    for source in ('Yunge6666/Hilbert-Local-Attention', 'SHI-Labs/Neighborhood-Attention-Transformer',
                   'rayleizhu/BiFormer', 'nat_{mini,tiny,small,base}.pth', 'biformer_{tiny,small,base}_in1k.pth'):
        assert source in out


# --- ConvertedPretrained: strict by default beyond the documented differences ---------------------------------------
def test_converted_pretrained_fails_on_undocumented_differences(tmp_path):
    official = official_hwt_state_dict(**TINY)
    official['layers.0.blocks.0.attn.extra'] = torch.zeros(3)  # an unexpected key
    path = tmp_path / 'odd.pth'
    torch.save(official, path)
    cfg = dict(type='ConvertedPretrained', checkpoint=str(path), convert_from='hwt')
    from backbones.converters.init import PretrainedError
    with pytest.raises(PretrainedError, match=r'odd\.pth \(hwt\): strict load failed.*unexpected'):
        HWT(arch=TINY, init_cfg=cfg).init_weights()
    HWT(arch=TINY, init_cfg=dict(cfg, strict=False)).init_weights()  # asked: logged, the rest loads


def test_plain_pretrained_given_an_official_file_stops_with_one_line(tmp_path):
    path = tmp_path / 'hwt_tiny_official.pth'
    torch.save({'model': official_hwt_state_dict(**TINY)}, path)
    with pytest.raises(ValueError, match="official hwt checkpoint.*type='ConvertedPretrained'"):
        HWT(arch=TINY, init_cfg=dict(type='Pretrained', checkpoint=str(path))).init_weights()


def test_no_weights_logs_training_from_scratch(monkeypatch):
    import backbones.converters.init as init
    seen = []
    monkeypatch.setattr(init, 'print_log', lambda msg, **kwargs: seen.append(msg))
    HWT(arch=TINY).init_weights()
    assert any('training from scratch' in m for m in seen)


# --- downloads: a loopback HTTP server, never the internet ---------------------------------------------------------
@pytest.fixture
def http_server(tmp_path):
    """Serve tmp_path/'www' on 127.0.0.1 (a free port); yields (base URL, list of requested paths)."""
    import functools
    import http.server
    import threading
    root = tmp_path / 'www'
    root.mkdir()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f'http://127.0.0.1:{server.server_address[1]}', requests, root
    finally:
        server.shutdown()
        server.server_close()


def test_converted_pretrained_downloads_once_into_the_hub_cache(http_server, tmp_path, monkeypatch):
    import hashlib
    base, requests, root = http_server
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    official = official_hwt_state_dict(**TINY)
    torch.save({'model': official}, root / 'hwt_tiny.pth')
    digest = hashlib.sha256((root / 'hwt_tiny.pth').read_bytes()).hexdigest()
    cfg = dict(type='ConvertedPretrained', checkpoint=f'{base}/hwt_tiny.pth', convert_from='hwt', sha256=digest)
    for _ in range(2):
        model = HWT(arch=TINY, init_cfg=cfg)
        model.init_weights()
        torch.testing.assert_close(model.patch_embed.proj.weight, official['patch_embed.proj.weight'])
    assert requests == ['/hwt_tiny.pth']  # the second run read the cache
    assert (tmp_path / 'torch_home' / 'hub' / 'checkpoints' / 'hwt_tiny.pth').is_file()


def test_download_checksum_mismatch_keeps_no_file(http_server, tmp_path, monkeypatch):
    from backbones.converters.init import resolve_checkpoint
    base, _, root = http_server
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    torch.save({'a': torch.zeros(1)}, root / 'x.pth')
    with pytest.raises(ValueError, match='does not match'):
        resolve_checkpoint(f'{base}/x.pth', sha256='0' * 64, progress=False)
    assert not (tmp_path / 'torch_home' / 'hub' / 'checkpoints' / 'x.pth').exists()


def test_download_failure_and_drive_links_name_the_local_path(tmp_path, monkeypatch):
    import socket
    from backbones.converters.init import resolve_checkpoint
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    local = tmp_path / 'torch_home' / 'hub' / 'checkpoints'
    with socket.socket() as s:  # a port nobody listens on: connection refused, like no network
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    url = f'http://127.0.0.1:{port}/nat_tiny.pth'
    with pytest.raises(FileNotFoundError, match=f'cannot download {url}.*put it at {local / "nat_tiny.pth"}'):
        resolve_checkpoint(url, progress=False)
    drive = 'https://drive.google.com/file/d/XYZ/view?usp=sharing'
    with pytest.raises(FileNotFoundError, match=f'Google Drive.*put it at {local / "hwt_tiny_224.pth"}'):
        resolve_checkpoint(drive, filename='hwt_tiny_224.pth')
    local.mkdir(parents=True, exist_ok=True)
    torch.save({'a': torch.zeros(1)}, local / 'hwt_tiny_224.pth')  # the user put it there
    assert resolve_checkpoint(drive, filename='hwt_tiny_224.pth') == str(local / 'hwt_tiny_224.pth')
