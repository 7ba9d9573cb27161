"""Reference answers, graded by `pytest tests/exercises --solutions`."""
