from . import demo  # noqa: F401
