"""weave-node: a maintained home for what Weave Net did."""

__version__ = "0.2.0"
