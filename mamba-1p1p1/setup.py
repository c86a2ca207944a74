"""Install ``localmamba_ssm`` on its own: ``pip install ./mamba-1p1p1`` (no compiler needed).

It depends on ``localmamba_conv1d`` (which brings the shared ``localmamba_kernel_runtime``); from a checkout that
dependency is taken from the sibling ``causal-conv1d/``. The C sources are package data, compiled on first use.
"""
from pathlib import Path

from setuptools import find_packages, setup

_SIBLING = Path(__file__).resolve().parent.parent / "causal-conv1d"
if (_SIBLING / "setup.py").is_file():
    CONV1D_REQUIREMENT = f"localmamba-conv1d @ {_SIBLING.as_uri()}"
else:
    CONV1D_REQUIREMENT = "localmamba-conv1d"

setup(
    name="localmamba-ssm",
    version="1.1.1",
    description="Selective scan for LocalMamba (mamba_ssm 1.1.1 API; cuda/triton/cpu/reference backends)",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["localmamba_ssm*"]),
    package_data={"localmamba_ssm.ops.cpu": ["csrc/*.c"]},
    install_requires=["torch>=2.4", CONV1D_REQUIREMENT],
    extras_require={"triton": ["triton>=3.0"]},   # as the root setup.py
)
