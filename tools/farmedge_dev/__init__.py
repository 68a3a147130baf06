"""farmedge's developer tooling (its own distribution, tools/pyproject.toml):
simulated farms, the demo, real local servers for tests and benchmarks.
Nothing in the farmedge package imports it (tests/test_import_rules.py);
``farmedge simulate`` and ``farmedge demo`` reach it through the
``farmedge.commands`` entry points."""
