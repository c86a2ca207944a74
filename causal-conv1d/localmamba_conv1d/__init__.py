"""Causal depthwise conv1d for LocalMamba (causal-conv1d 1.0.0 API) with cuda / triton / cpu / reference backends."""
from localmamba_kernel_runtime.backends import selected_backend

from .causal_conv1d_interface import causal_conv1d_fn, causal_conv1d_update
from .reference import UnsupportedActivationError, causal_conv1d_ref, causal_conv1d_update_ref

__version__ = "1.0.0"

__all__ = [
    "UnsupportedActivationError",
    "causal_conv1d_fn",
    "causal_conv1d_ref",
    "causal_conv1d_update",
    "causal_conv1d_update_ref",
    "selected_backend",
]
