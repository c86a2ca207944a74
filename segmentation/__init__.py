"""LocalMamba for semantic segmentation (mmseg 1.x plugin).

Importing this package loads nothing from OpenMMLab; configs load the plugin with
``custom_imports = dict(imports=['segmentation.local_mamba'])``, which registers the backbones of
:mod:`classification.dense` in mmseg's registry (mmdet is not needed).
"""
