"""Small helpers shared across emoreg: file reading, atomic writes, progress."""
