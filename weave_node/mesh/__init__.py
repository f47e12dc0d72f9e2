"""weave_node.mesh: see docs/architecture.md."""
