"""What the engine, the data pipeline, the search and the det/seg plugins all need: checkpoint I/O, RNG streams,
CSV logs, the stop signals (``signals``), matplotlib for figures (``plots``).

This package sits below ``classification.models``, ``data``, ``search`` and ``engine`` and imports none of them.
"""
from .checkpoint_io import (TMP_PREFIX, TRUST_FLAG, CheckpointError, UnsafeCheckpointError, atomic_copy, atomic_save,
                            atomic_write_text, load_checkpoint, load_checkpoint_on_all_ranks, remove_temporary_files,
                            state_dict_from, strip_prefix)
from .csv_log import CsvLog

__all__ = ['TMP_PREFIX', 'TRUST_FLAG', 'CheckpointError', 'CsvLog', 'UnsafeCheckpointError', 'atomic_copy',
           'atomic_save', 'atomic_write_text', 'load_checkpoint', 'load_checkpoint_on_all_ranks',
           'remove_temporary_files', 'state_dict_from', 'strip_prefix']
