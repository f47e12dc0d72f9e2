"""The @deploy functions (pyinfra). A pyinfra outside the supported range stops the import with what to do."""

from weave_node_deploy.compat import check_pyinfra

check_pyinfra()
