"""Converters from the official checkpoints of the source works to our parameter names.

Each format lives in its own module ``backbones/converters/<format>.py`` and defines
``convert(state_dict: dict[str, Tensor]) -> dict[str, Tensor]`` (pure, no I/O).
"""
import importlib

FORMATS = ('biformer', 'nat', 'dinat', 'hwt', 'hnt')


def get_converter(fmt: str):
    """Return the ``convert`` function of an official checkpoint format."""
    if fmt not in FORMATS:
        raise ValueError(f'unknown checkpoint format {fmt!r}; expected one of {FORMATS}')
    return importlib.import_module(f'{__name__}.{fmt}').convert
