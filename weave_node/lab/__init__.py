"""The local lab: real Debian hosts (systemd as PID 1, sshd) in network namespaces on this one machine.

A development and test tool, not part of the product: no module of the router imports it.
"""
