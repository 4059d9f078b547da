"""Helpers shared by the tests: golden fixtures, CLI and fit runs, synthetic records, bench loaders."""
