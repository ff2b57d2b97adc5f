"""Errors raised while locating or loading model weights; messages name the file and the fix."""


class ModelLoadError(ValueError):
    """A model could not be found or its files are missing, corrupt or of an unsupported kind."""
