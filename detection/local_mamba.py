"""mmdet plugin: registers ``MM_LocalVim``, ``MM_LocalVSSM`` (from :mod:`classification.dense`) and the ViTDet pieces
in mmdet's registries.

Load it from a config with ``custom_imports = dict(imports=['detection.local_mamba'], allow_failed_imports=False)``.
"""
from mmdet.registry import MODELS

from classification.dense import MM_LocalVim, MM_LocalVSSM, register

from . import vitdet

register(MODELS)

__all__ = ['MM_LocalVim', 'MM_LocalVSSM', 'vitdet']
