"""Packaged deploys (pyinfra @deploy functions with documented DEFAULTS), composable by users."""
