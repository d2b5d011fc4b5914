"""Runnable examples; each is run by a test (tests/test_examples.py and others)."""
