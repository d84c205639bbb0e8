"""Converters from the official checkpoints of the source works to our parameter names.

Each format lives in its own module ``backbones/converters/<format>.py`` and defines
``convert(state_dict: dict[str, Tensor]) -> dict[str, Tensor]`` (pure, no I/O; the input is already unwrapped and
stripped of wrapper prefixes; keys it does not know pass through so the loader reports them).

- ``common``: unwrap / strip / select prefixes, ``resize_rpb``, ``load_converted`` (logs every missing / unexpected
  key, raises when nothing matched).
- ``init``: the ``ConvertedPretrained`` weight initializer (``init_cfg=dict(type='ConvertedPretrained',
  checkpoint=..., convert_from=<format>)``), registered when ``backbones`` is imported.
- ``tools/convert_checkpoint.py --from <format> IN OUT`` writes a converted ``{'state_dict': ...}`` file.
"""
import importlib

__all__ = ['FORMATS', 'get_converter']

FORMATS = ('biformer', 'nat', 'dinat', 'hwt', 'hnt')


def get_converter(fmt: str):
    """Return the ``convert`` function of an official checkpoint format."""
    if fmt not in FORMATS:
        raise ValueError(f'unknown checkpoint format {fmt!r}; expected one of {FORMATS}')
    return importlib.import_module(f'{__name__}.{fmt}').convert
