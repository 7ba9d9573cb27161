"""Your exercises: fill in the stubs, then run `pytest tests/exercises` for your score."""
