"""User-facing errors: each message says what was wrong and what to do about it."""


class FractureError(Exception):
    """A mistake the user can fix (bad path, bad config, missing weights, bad image)."""


class ConfigError(FractureError):
    """An unknown config key or a value of the wrong type."""


class DataError(FractureError):
    """Missing, empty or inconsistent data."""


class WeightsError(FractureError):
    """Backbone weights that cannot be found or loaded."""


class ImageError(FractureError):
    """An image that cannot be decoded."""
