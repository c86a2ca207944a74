"""The error of unusable dataset input, raised across the data package."""


class DataError(ValueError):
    """Unusable dataset input; the message names the file or folder."""
