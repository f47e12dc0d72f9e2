"""Entry deploy: prove SSH + systemd on every host.

pyinfra -y inventory/lab.py deploys/smoke.py
"""

from deploys.tasks.smoke import smoke_service

smoke_service()
