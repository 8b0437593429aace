"""collie: the Sheepdog administration CLI (Sheepdog 1.0 `dog`)."""

from sheep import __version__  # noqa: F401  one version for the whole package
