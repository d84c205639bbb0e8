"""The config's own visualizer (mmdet ``DetLocalVisualizer`` / mmseg ``SegLocalVisualizer``), as ``--show-dir``
of tools/test.py draws with, for tools that draw outside a runner (browse_dataset.py, demo.py)."""
from __future__ import annotations

import uuid


def build_visualizer(cfg, scope: str, out_dir: str, **overrides):
    """The config's visualizer under a fresh instance name (visualizers are named singletons in mmengine), no
    logging backends, saving under ``out_dir``; ``overrides`` set other constructor arguments (e.g. ``alpha``)."""
    from mmengine.registry import VISUALIZERS, DefaultScope
    vis_cfg = dict(cfg.visualizer)
    vis_cfg.update(name=f'sparsedense_{uuid.uuid4().hex[:8]}', vis_backends=None, save_dir=out_dir, **overrides)
    with DefaultScope.overwrite_default_scope(scope):
        return VISUALIZERS.build(vis_cfg)
