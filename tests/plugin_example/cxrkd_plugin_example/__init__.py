"""An example cxrkd plugin (see ``pyproject.toml``'s entry points); nothing runs on import."""
