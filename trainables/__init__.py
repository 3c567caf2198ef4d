"""cxrkd: trainables."""
