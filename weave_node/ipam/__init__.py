"""weave_node.ipam: see docs/architecture.md."""
