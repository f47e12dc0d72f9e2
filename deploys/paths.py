"""Where the shared Jinja2 templates live (one set, used by pyinfra and Ansible alike)."""

from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
