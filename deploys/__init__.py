"""pyinfra packaged deploys of weave-node. Never imports weave_node: hosts are reached only through pyinfra."""
