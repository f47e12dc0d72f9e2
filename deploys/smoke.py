"""Entry deploy: prove SSH + systemd on every host.

pyinfra -y inventory/lab.py deploys/smoke.py
"""

from weave_node_deploy.tasks.smoke import smoke_service

smoke_service()
