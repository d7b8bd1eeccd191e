"""Example apps for ``wsnode serve --app``."""
