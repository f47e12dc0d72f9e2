"""The CNI plugin `weave-net`: a static Go client of the router's local API (weave-net/main.go), built by gobuild."""
