"""detection/tools/analysis_tools/mamba_get_flops.py on tiny LocalVMamba configs: the whole model's parameters, and
FLOPs that add up from the backbone's (selective scans charged by the scan handle) and the heads'."""
import os
import re
import subprocess
import sys

import pytest
import torch

pytest.importorskip('mmseg', reason='mmseg is not installed: run `bash tools/install_mm.sh`')
pytest.importorskip('mmdet', reason='mmdet is not installed: run `bash tools/install_mm.sh`')

from classification.dense import mm_flops  # noqa: E402
from classification.dense.mm_flops import DEFAULT_SHAPES  # noqa: E402
from classification.models.directions import LOCAL_VSSM_TINY_DIRECTIONS  # noqa: E402
from classification.models.flop_count import flop_analysis  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(REPO, 'detection', 'tools', 'analysis_tools', 'mamba_get_flops.py')
SCAN = 'PythonOp.TracedSelectiveScan'
HW = (64, 96)

TINY_BACKBONE = f"dims=16, depths=(1, 1, 1, 1), directions={LOCAL_VSSM_TINY_DIRECTIONS[:4]!r}"
TINY_SEG = """
_base_ = {base!r}
model = dict(backbone=dict({backbone}, pretrained=None),
             decode_head=dict(in_channels=[16, 32, 64, 128], channels=16),
             auxiliary_head=dict(in_channels=64, channels=16))
"""
TINY_DET = """
_base_ = {base!r}
model = dict(backbone=dict({backbone}, pretrained=None), neck=dict(in_channels=[16, 32, 64, 128], out_channels=16),
             rpn_head=dict(in_channels=16, feat_channels=16),
             roi_head=dict(bbox_roi_extractor=dict(out_channels=16), bbox_head=dict(in_channels=16, fc_out_channels=16),
                           mask_roi_extractor=dict(out_channels=16),
                           mask_head=dict(in_channels=16, conv_out_channels=16)),
             test_cfg=dict(rpn=dict(nms_pre=50, max_per_img=20), rcnn=dict(max_per_img=5)))
"""


def start_tool(config_path: str) -> subprocess.Popen:
    """The tool on ``config_path``, started: the test builds and counts its own model meanwhile."""
    return subprocess.Popen([sys.executable, TOOL, config_path, '--shape', *map(str, HW)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS='1'))


def tool_result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-2000:] + err[-3000:]
    assert f'Input shape: (3, {HW[0]}, {HW[1]})' in out
    return {key: int(re.search(rf'^{label}: (\d+)$', out, re.M)[1])
            for key, label in (('flops', 'flops'), ('params', 'params'), ('scans', 'of which selective scans'))}


def build(config_path: str, scope: str):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmengine.utils import import_modules_from_strings

    cfg = Config.fromfile(config_path)
    import_modules_from_strings(**cfg.custom_imports)
    init_default_scope(scope)
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    return registry.build(cfg.model).eval()


def write(tmp_path, template: str, base: str) -> str:
    path = tmp_path / 'tiny.py'
    path.write_text(template.format(base=os.path.join(REPO, base), backbone=TINY_BACKBONE))
    return str(path)


def test_segmentor_flops_are_backbone_plus_decode_head(tmp_path):
    config = write(tmp_path, TINY_SEG,
                   'segmentation/configs/local_mamba/upernet_local_vssm_tiny_8xb2-160k_ade20k-512x512.py')
    tool = start_tool(config)
    model = build(config, 'mmseg')
    backbone = flop_analysis(model.backbone, (3, *HW))
    with torch.no_grad():
        features = model.backbone(torch.randn(1, 3, *HW))

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = model.decode_head

        def forward(self, image):
            return self.head(list(features))

    head = flop_analysis(Head(), (3, *HW))
    result = tool_result(tool)
    assert result['params'] == sum(p.numel() for p in model.parameters())  # auxiliary head included
    assert result['scans'] == backbone.by_operator()[SCAN] > 0
    assert result['flops'] == int(backbone.total()) + int(head.total())  # 'tensor' mode runs no auxiliary head


def test_detector_flops_include_the_backbone_scans(tmp_path):
    config = write(tmp_path, TINY_DET, 'detection/configs/local_mamba/mask_rcnn_local_vssm_tiny_fpn_coco.py')
    tool = start_tool(config)
    model = build(config, 'mmdet')
    backbone = flop_analysis(model.backbone, (3, *HW))
    neck = flop_analysis(torch.nn.Sequential(model.backbone, model.neck), (3, *HW))
    result = tool_result(tool)
    assert result['params'] == sum(p.numel() for p in model.parameters())
    assert result['scans'] == backbone.by_operator()[SCAN] > 0
    assert result['flops'] > int(neck.total()) > int(backbone.total())  # plus the RPN and RoI heads


def test_default_shapes_are_the_original_tools():
    """Guards against a changed default input of mamba_get_flops.py: mmdet's get_flops counts at (H, W) =
    (1280, 800), the segmentation tool at (512, 2048), as the tool's --shape help says."""
    assert DEFAULT_SHAPES == {'mmdet': (1280, 800), 'mmseg': (512, 2048)}


@pytest.mark.parametrize('option, message', [
    ('model.backbone.drop_path_rate=abc',
     'error: --cfg-options model.backbone.drop_path_rate=abc: the config holds a number there (0.1), not text'),
    ('model.backbone.drop_path_rat=0.1',
     "error: model.backbone: MM_LocalVSSM does not take 'drop_path_rat'; did you mean drop_path_rate, drop_rate, "
     "ssm_drop_rate?"),
])
def test_a_wrong_cfg_option_is_one_line_as_in_the_train_and_test_tools(tmp_path, option, message):
    """A value of the wrong type, or a misspelt key, was a traceback from the model's build or its trace."""
    config = write(tmp_path, TINY_SEG,
                   'segmentation/configs/local_mamba/upernet_local_vssm_tiny_8xb2-160k_ade20k-512x512.py')
    proc = subprocess.run([sys.executable, TOOL, config, '--shape', *map(str, HW), '--cfg-options', option],
                          capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == message


class _Recorder(torch.nn.Module):
    """A stand-in mm model: records what its 'tensor' forward is given; a 1x1 conv of 3 -> 2 channels (fvcore: 6 FLOPs
    a pixel) and a cumsum (an op without a FLOP rule); a frozen parameter (as a det backbone's frozen stages) counts
    too."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 1)
        self.frozen = torch.nn.Parameter(torch.ones(3), requires_grad=False)
        self.calls = []

    def forward(self, image, samples, mode):
        self.calls.append((tuple(int(n) for n in image.shape), [s.metainfo for s in samples], mode))
        return self.conv(image).cumsum(-1)


@pytest.mark.parametrize('scope, sample', [('mmseg', 'SegDataSample'), ('mmdet', 'DetDataSample')])
def test_complexity_traces_an_h_by_w_image_described_by_its_samples(monkeypatch, scope, sample):
    """H and W reach the traced image and the data samples' metadata in that order (a transposed (W, H) image counts
    the same FLOPs for most layers, so the totals of the tools' runs could not tell), and the result is the
    parameters, fvcore's FLOPs and the ops it has no rule for."""
    model = _Recorder()
    monkeypatch.setattr(mm_flops, 'build_mm_model', lambda cfg: (model, scope))
    result = mm_flops.complexity(None, 24, 40)
    assert model.calls and {call[0] for call in model.calls} == {(1, 3, 24, 40)}
    assert {call[2] for call in model.calls} == {'tensor'}
    for _, metas, _ in model.calls:
        assert len(metas) == 1
        for key in ('img_shape', 'ori_shape', 'pad_shape', 'batch_input_shape'):
            assert tuple(metas[0][key]) == (24, 40), key
    samples = mm_flops.random_image_samples(scope, 24, 40)
    assert [type(s).__name__ for s in samples] == [sample]
    assert result == dict(params=3 * 2 + 2 + 3, flops=3 * 2 * 24 * 40, scan_flops=0, uncounted={'aten::cumsum': 1})


def test_a_config_without_default_scope_is_an_mmdet_model():
    """mmdet's get_flops is what the original tool wraps: a config that names no default_scope is built through mmdet's
    registry (DetDataPreprocessor is registered there only), and counted with detection samples."""
    from mmengine.config import Config

    model, scope = mm_flops.build_mm_model(Config(dict(model=dict(type='DetDataPreprocessor'))))
    assert scope == 'mmdet' and type(model).__name__ == 'DetDataPreprocessor' and not model.training
