"""Composition root of the router: the only module that imports every layer (filled in by the mesh issue)."""
