"""What the engine, the data pipeline, the search and the det/seg plugins all need: checkpoint I/O.

This package sits below ``classification.models``, ``data``, ``search`` and ``engine`` and imports none of them.
"""
from .checkpoint_io import (TRUST_FLAG, CheckpointError, UnsafeCheckpointError, atomic_copy, atomic_save,
                            load_checkpoint, state_dict_from, strip_prefix)

__all__ = ['TRUST_FLAG', 'CheckpointError', 'UnsafeCheckpointError', 'atomic_copy', 'atomic_save', 'load_checkpoint',
           'state_dict_from', 'strip_prefix']
