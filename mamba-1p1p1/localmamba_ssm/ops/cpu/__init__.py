"""The ``cpu`` backend of the selective scan: a C kernel compiled on first use, with a PyTorch fallback."""
