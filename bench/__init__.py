"""dkserver's benchmark suite: ``python -m bench all`` (see bench.runner)."""
