"""LocalMamba classification library. ``import classification`` registers all models with timm."""
from . import models

__version__ = '0.1.0'
