"""Scripts launched by tests/test_distributed.py (not collected by pytest)."""
