"""weave_node.overlay.sleeve: see docs/architecture.md."""
