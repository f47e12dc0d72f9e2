"""The CNI plugin `weave-net`: a thin, stdlib-only client of the router's local API."""
