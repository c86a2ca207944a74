"""Install ``localmamba_conv1d`` on its own: ``pip install ./causal-conv1d`` (no compiler needed)."""
from setuptools import find_packages, setup

setup(
    name="localmamba-conv1d",
    version="1.0.0",
    description="Causal depthwise conv1d for LocalMamba (causal-conv1d 1.0.0 API; cuda/triton/cpu/reference backends)",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["localmamba_conv1d*"]),
    install_requires=["torch>=2.1"],
    extras_require={"triton": ["triton>=2.1"]},
)
