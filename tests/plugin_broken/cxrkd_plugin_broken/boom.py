"""An importer module that raises at import."""

raise RuntimeError("boom: this plugin is broken on purpose")
