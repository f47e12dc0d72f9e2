"""weave_node.datapath: see docs/architecture.md."""
