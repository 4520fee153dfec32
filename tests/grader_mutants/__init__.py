"""Plausible wrong solutions of each exercise, one module per notebook (tests/test_grader_mutants.py)."""
