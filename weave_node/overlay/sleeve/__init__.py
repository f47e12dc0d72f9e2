"""Sleeve: the userspace datapath (frames over UDP 6783, optionally sealed with NaCl secretbox)."""
