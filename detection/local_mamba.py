"""mmdet plugin: registers ``MM_LocalVim``, ``MM_LocalVSSM`` and the ViTDet pieces in mmdet's registries.

Load it from a config with ``custom_imports = dict(imports=['detection.local_mamba'], allow_failed_imports=False)``.
"""
from mmdet.registry import MODELS

from . import vitdet
from .backbones import MM_LocalVim, MM_LocalVSSM, register

register(MODELS)

__all__ = ['MM_LocalVim', 'MM_LocalVSSM', 'vitdet']
