"""Install LocalMamba: the classification library, the two kernel packages and the det/seg plugins.

``pip install -e .`` needs no CUDA compiler. The kernel packages live in their own folders
(``mamba-1p1p1/``, ``causal-conv1d/``) and also install on their own.
"""
from setuptools import find_packages, setup

KERNEL_PACKAGES = {
    "localmamba_ssm": "mamba-1p1p1/localmamba_ssm",
    "localmamba_conv1d": "causal-conv1d/localmamba_conv1d",
    "localmamba_kernel_runtime": "causal-conv1d/localmamba_kernel_runtime",
}
# the C kernels, compiled on first use
KERNEL_SOURCES = {
    "localmamba_ssm.ops.cpu": ["csrc/*.c"],
    "localmamba_conv1d": ["csrc/*.c"],
    "localmamba_kernel_runtime": ["csrc/*.c", "csrc/*.h"],
}

packages = find_packages(include=["classification*", "detection*", "segmentation*"])
packages += find_packages("mamba-1p1p1", include=["localmamba_ssm*"])
packages += find_packages("causal-conv1d", include=["localmamba_conv1d*", "localmamba_kernel_runtime*"])

setup(
    name="localmamba",
    version="0.1.0",
    description="LocalMamba: visual state space models with windowed selective scan (LocalVim, LocalVMamba)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=packages,
    package_dir=KERNEL_PACKAGES,
    package_data=KERNEL_SOURCES,
    include_package_data=True,
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",   # the release of torch 2.4
        "timm>=1.0.21",   # calculate_drop_path_rates (tests/test_packaging.py)
        "safetensors>=0.4",   # timm's too; checkpoint_io reads .safetensors weights
        "numpy>=1.23",
        "pyyaml>=6.0",
        "pillow>=9.0",
        "scikit-learn>=1.1",
        "matplotlib>=3.5",
        "fvcore>=0.1.5.post20221221",
    ],
    extras_require={
        "triton": ["triton>=3.0"],   # torch 2.4's; kernels checked under 3.0, 3.1, 3.2, 3.6, 3.8, 3.9
        "test": ["pytest>=8.0", "pytest-xdist>=3.0", "onnx>=1.14", "onnxruntime>=1.16", "onnxscript>=0.7",
                 "flake8>=7.0"],
        # detection/, segmentation/: run `bash tools/install_mm.sh` first (builds mmcv 2.1.0 with ops; pip cannot)
        "mm": ["mmcv==2.1.0", "mmengine>=0.10.3,<1", "mmdet==3.3.0", "mmsegmentation==1.2.2", "setuptools<81",
               "pycocotools", "ftfy", "regex", "shapely", "scipy", "terminaltables", "prettytable"],
    },
)
