"""Dense-prediction backbones (multi-scale feature maps of LocalVim and LocalVMamba), shared by the mmdet and mmseg
plugins, and the mmengine Runner entry points of their tools.

Needs torch and timm only; mmengine is imported by the entry points and, when installed, for log lines.
"""
from .backbones import MM_LocalVim, MM_LocalVSSM, register

__all__ = ['MM_LocalVim', 'MM_LocalVSSM', 'register']
