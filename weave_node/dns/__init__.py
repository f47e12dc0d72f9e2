"""The routers' DNS (issue 25): name records gossiped by the mesh, and (to come) the server on the bridge."""
