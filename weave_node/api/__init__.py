"""weave_node.api: see docs/architecture.md."""
