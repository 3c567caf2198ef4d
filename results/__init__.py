"""cxrkd: results."""
