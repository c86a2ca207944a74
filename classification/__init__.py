"""LocalMamba classification library. ``import classification`` registers all models with timm."""
from . import models  # noqa: F401  (the import registers the models)

__version__ = '0.1.0'
