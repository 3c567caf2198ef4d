"""cxrkd: spaces."""
