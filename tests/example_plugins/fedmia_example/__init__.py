"""Example fedmia plug-ins in a package of their own (see pyproject.toml beside it)."""
