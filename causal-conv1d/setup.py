"""Install ``localmamba_conv1d`` on its own: ``pip install ./causal-conv1d`` (no compiler needed).

It also installs ``localmamba_kernel_runtime``, the backend registry and C-kernel runtime that ``localmamba_conv1d``
and ``localmamba_ssm`` share. The C sources are package data, compiled on first use.
"""
from setuptools import find_packages, setup

setup(
    name="localmamba-conv1d",
    version="1.0.0",
    description="Causal depthwise conv1d for LocalMamba (causal-conv1d 1.0.0 API; cuda/triton/cpu/reference backends)",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["localmamba_conv1d*", "localmamba_kernel_runtime*"]),
    package_data={"localmamba_conv1d": ["csrc/*.c"], "localmamba_kernel_runtime": ["csrc/*.c", "csrc/*.h"]},
    install_requires=["torch>=2.4"],
    extras_require={"triton": ["triton>=3.0"]},   # as the root setup.py
)
