"""weave_node.overlay: see docs/architecture.md."""
