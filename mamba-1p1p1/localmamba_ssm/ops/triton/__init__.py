"""The ``triton`` backend (imported only when used: importing this package does not import triton)."""
