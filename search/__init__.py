"""cxrkd: search."""
