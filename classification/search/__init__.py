"""Scan-direction search: supernet monitoring during training and extraction of the searched directions."""
