"""Convert an official checkpoint of one of the source works into our parameter names.

    python tools/convert_checkpoint.py --from nat nat_tiny.pth work_dirs/nat_tiny_converted.pth [--arch tiny]

Reads IN with ``torch.load(weights_only=True)``, unwraps it, strips wrapper prefixes, runs the format's converter
(``backbones.converters.get_converter``) and writes ``{'state_dict': converted}`` to OUT (atomically), which then
loads with ``init_cfg=dict(type='Pretrained', checkpoint=OUT)``. With ``--arch`` the result is first loaded into the
matching backbone: every missing / unexpected / mismatched key is listed, the format's documented differences
(e.g. the output norms an ImageNet classifier lacks) as info, and anything else (e.g. a bias table of another
kernel size) exits with status 1 without writing OUT.
"""
from __future__ import annotations

import argparse
import ast
import logging
import os
import sys
import textwrap

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from backbones.converters import FORMATS, get_converter  # noqa: E402
from backbones.converters.common import select_prefix, strip_prefixes  # noqa: E402

BACKBONE_TYPES = {'biformer': 'BiFormer', 'nat': 'NAT', 'dinat': 'DiNAT', 'hwt': 'HWT', 'hnt': 'HNT'}
SOURCES = {
    'hwt': 'Yunge6666/Hilbert-Local-Attention, hwt.py: HWT-tiny ImageNet checkpoints (224 and 256 px; Google Drive '
           'links in its README)',
    'hnt': 'Yunge6666/Hilbert-Local-Attention, hnt.py: HNT-mini / HNT-tiny ImageNet checkpoints (Google Drive links '
           'in its README)',
    'nat': 'SHI-Labs/Neighborhood-Attention-Transformer, classification/nat.py: nat_{mini,tiny,small,base}.pth; '
           'detection/ and segmentation/ checkpoints with --prefix backbone',
    'dinat': 'SHI-Labs/Neighborhood-Attention-Transformer, classification/dinat.py: '
             'dinat_{mini,tiny,small,base}_in1k_224.pth (and the large / 11x11 ones); dense checkpoints with '
             '--prefix backbone',
    'biformer': 'rayleizhu/BiFormer, models/biformer.py: biformer_{tiny,small,base}_in1k.pth (OneDrive links in its '
                'README); object_detection/ and semantic_segmentation/ checkpoints (backbone.* keys)',
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    epilog = 'formats (--from):\n' + '\n'.join(
        textwrap.fill(SOURCES[fmt], 100, initial_indent=f'  {fmt:9s}', subsequent_indent=' ' * 11,
                      break_on_hyphens=False, break_long_words=False) for fmt in FORMATS)
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--from', dest='fmt', required=True, choices=FORMATS,
                        help='official checkpoint format (which repository and files: see below)')
    parser.add_argument('src', metavar='IN', help='official checkpoint file')
    parser.add_argument('dst', metavar='OUT', help='output file ({"state_dict": ...})')
    parser.add_argument('--prefix', default=None, help='keep only keys under this prefix (e.g. backbone)')
    parser.add_argument('--arch', default=None,
                        help='also load the result into the backbone with this arch (preset name or a dict literal '
                             'such as "{\'embed_dims\': 64, ...}") before writing; keys beyond the format\'s '
                             'documented differences (missing, unexpected, other shapes) exit 1 without writing OUT')
    parser.add_argument('--resize-bias-tables', action='store_true',
                        help='with --arch: resize bias tables of another kernel / window size to the arch\'s '
                             '(listed) instead of failing')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not os.path.isfile(args.src):
        print(f'error: input checkpoint not found: {args.src}', file=sys.stderr)
        return 2
    out_dir = os.path.dirname(os.path.abspath(args.dst))
    if not os.path.isdir(out_dir):
        print(f'error: output directory does not exist: {out_dir}', file=sys.stderr)
        return 2
    from backbones.converters.init import load_official_checkpoint
    try:
        state_dict = load_official_checkpoint(args.src)
        if args.prefix:
            state_dict = select_prefix(state_dict, args.prefix)
        state_dict = strip_prefixes(state_dict)
        converted = get_converter(args.fmt)(state_dict)
    except (ValueError, KeyError) as err:
        print(f'error: {args.src}: {err}', file=sys.stderr)
        return 1
    if args.arch is not None:
        converted = _check_against_arch(args, state_dict, converted)
        if converted is None:
            return 1
    else:
        print(f'{args.fmt}: not checked against a model (give --arch to check the shapes before writing)')
    n_params = sum(v.numel() for v in converted.values())
    tmp = args.dst + '.tmp'
    torch.save({'state_dict': converted}, tmp)
    os.replace(tmp, args.dst)
    print(f'{args.fmt}: read {len(state_dict)} tensors, wrote {len(converted)} tensors '
          f'({n_params / 1e6:.2f} M values) -> {args.dst}')
    return 0


def _check_against_arch(args: argparse.Namespace, state_dict: dict, converted: dict) -> dict | None:
    """Load ``converted`` into the ``--arch`` backbone; the (resized, with --resize-bias-tables) state dict to
    write, or None (after one error line) when keys beyond the documented differences do not fit."""
    import backbones  # noqa: F401  (registers the backbones)
    from mmengine.registry import MODELS

    from backbones.converters.common import adapt_rpb_tables, load_converted
    from backbones.converters.init import _converter_kwargs, expected_missing
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')
    logger = logging.getLogger('convert_checkpoint')
    arch = ast.literal_eval(args.arch) if args.arch.lstrip().startswith('{') else args.arch
    model = MODELS.build(dict(type=BACKBONE_TYPES[args.fmt], arch=arch))
    if _converter_kwargs(args.fmt, model):  # HWT: convert for the arch's window size
        converted = get_converter(args.fmt)(state_dict, **_converter_kwargs(args.fmt, model))
    try:
        result = load_converted(model, converted, strict=True, logger=logger, expected_missing=expected_missing(
            args.fmt), resize_tables=args.resize_bias_tables)
    except RuntimeError as err:
        print(f'error: {args.src} does not fit {BACKBONE_TYPES[args.fmt]}(arch={args.arch!r}): {err}; nothing '
              f'written', file=sys.stderr)
        return None
    print(f'check {BACKBONE_TYPES[args.fmt]}(arch={args.arch!r}): loaded {len(result.loaded)}, '
          f'missing {len(result.missing)} (documented), resized {len(result.resized)}')
    return adapt_rpb_tables(converted, model.state_dict()) if args.resize_bias_tables else converted


if __name__ == '__main__':
    sys.exit(main())
