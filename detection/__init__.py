"""LocalMamba for object detection and instance segmentation (mmdet 3.x plugin).

Importing this package loads nothing from OpenMMLab; configs load the plugin with
``custom_imports = dict(imports=['detection.local_mamba'])``. The backbones shared with ``segmentation`` live in
:mod:`classification.dense`, which needs neither mmdet nor mmseg.
"""
