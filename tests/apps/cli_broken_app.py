"""An app module that fails while importing, as a user's app with a bug does (tests/test_cli_errors.py)."""

raise RuntimeError("the app's own start-up failed")
