"""mmseg plugin: registers ``MM_LocalVim`` and ``MM_LocalVSSM`` (from :mod:`classification.dense`) in mmseg's
``MODELS``, ``MM_LocalVim`` giving a list of maps for one ``out_indices`` entry too (mmseg's heads take lists); mmdet is
not needed.

Load it from a config with ``custom_imports = dict(imports=['segmentation.local_mamba'], allow_failed_imports=False)``.
"""
from mmseg.registry import MODELS

from classification.dense import MM_LocalVim, MM_LocalVSSM, register

register(MODELS, bare_single_map=False)

__all__ = ['MM_LocalVim', 'MM_LocalVSSM']
