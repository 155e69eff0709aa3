"""The ``genvae`` command line (click command groups, rich output)."""
