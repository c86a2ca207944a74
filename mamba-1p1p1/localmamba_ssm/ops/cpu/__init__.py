"""The ``cpu`` backends: the Python side of each C kernel in ``csrc/`` (compiled on first use).

- ``selective_scan_cpu``: ``selective_scan_fn``, with ``torch_scan`` as its PyTorch fallback (fp64, no compiler).
- ``multi_scan_cpu``: ``multi_scan_inner_fn``; ``attention_merge_cpu``: ``attention_merge_fn``.
- ``scan_merge_cpu``: the two in one call (``multi_scan_attention_merge_fn``), sharing a scratch buffer.
- ``state_update_cpu``: ``selective_state_update`` (one decoding step, the state updated in place).
"""
