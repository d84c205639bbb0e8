"""Convert an official checkpoint of one of the source works into our parameter names.

    python tools/convert_checkpoint.py --from nat nat_tiny.pth work_dirs/nat_tiny_converted.pth [--arch tiny]

Reads IN with ``torch.load(weights_only=True)``, unwraps it, strips wrapper prefixes, runs the format's converter
(``backbones.converters.get_converter``) and writes ``{'state_dict': converted}`` to OUT, which then loads with
``init_cfg=dict(type='Pretrained', checkpoint=OUT)``. With ``--arch`` the result is also loaded into the matching
backbone (every missing / unexpected key is listed) to check it fits.
"""
from __future__ import annotations

import argparse
import ast
import logging
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from backbones.converters import FORMATS, get_converter  # noqa: E402
from backbones.converters.common import select_prefix, strip_prefixes  # noqa: E402

BACKBONE_TYPES = {'biformer': 'BiFormer', 'nat': 'NAT', 'dinat': 'DiNAT', 'hwt': 'HWT', 'hnt': 'HNT'}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--from', dest='fmt', required=True, choices=FORMATS, help='official checkpoint format')
    parser.add_argument('src', metavar='IN', help='official checkpoint file')
    parser.add_argument('dst', metavar='OUT', help='output file ({"state_dict": ...})')
    parser.add_argument('--prefix', default=None, help='keep only keys under this prefix (e.g. backbone)')
    parser.add_argument('--arch', default=None,
                        help='also load the result into the backbone with this arch (preset name or a dict literal '
                             'such as "{\'embed_dims\': 64, ...}") and report missing / unexpected keys')
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
    n_params = sum(v.numel() for v in converted.values())
    print(f'{args.fmt}: read {len(state_dict)} tensors, wrote {len(converted)} tensors '
          f'({n_params / 1e6:.2f} M values) -> {args.dst}')
    torch.save({'state_dict': converted}, args.dst)
    if args.arch is not None:
        import backbones  # noqa: F401  (registers the backbones)
        from mmengine.registry import MODELS

        from backbones.converters.common import load_converted
        logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')
        arch = ast.literal_eval(args.arch) if args.arch.lstrip().startswith('{') else args.arch
        model = MODELS.build(dict(type=BACKBONE_TYPES[args.fmt], arch=arch))
        result = load_converted(model, converted, logger=logging.getLogger('convert_checkpoint'))
        print(f'check {BACKBONE_TYPES[args.fmt]}(arch={args.arch!r}): loaded {len(result.loaded)}, '
              f'missing {len(result.missing)}, unexpected {len(result.unexpected)}, '
              f'mismatched {len(result.mismatched)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
