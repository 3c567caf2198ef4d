"""A broken cxrkd plugin, for tests."""
