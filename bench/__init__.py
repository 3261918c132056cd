"""Performance benchmarks of meireport (not tests): ``nox -s bench``."""
