"""IPsec ESP for the fast datapath between two peers whose kernels can (docs/architecture.md, "Encrypted fastdp")."""
