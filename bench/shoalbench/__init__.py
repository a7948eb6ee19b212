"""The benchmark runner's pieces; `bench/run.py` is the command."""
