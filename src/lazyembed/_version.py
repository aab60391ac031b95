"""The package version, alone in a module: the daemon and its clients compare it, and
importing it must not import the package's public names."""

__version__ = "0.1.0.dev0"
