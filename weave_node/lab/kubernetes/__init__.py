"""The lab as a Kubernetes cluster (test infrastructure, not the product): binaries built here from Debian's
source package, certificates, control-plane and node units, images built without a registry."""
