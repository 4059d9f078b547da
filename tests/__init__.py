"""salmonn-pl's test suite, a package: shared test helpers are imported as ``tests.helpers.<module>``.

Every test folder is a package too, so test modules have unique names (``tests.eval.test_report``) and
pytest puts the repository root on ``sys.path`` (the folder above the top package); nothing else
changes ``sys.path``. Spawned processes inherit it; subprocesses get it through ``PYTHONPATH``.
"""
