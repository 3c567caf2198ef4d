"""cxrkd: trainables/data."""
