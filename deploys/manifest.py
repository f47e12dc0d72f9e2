"""The Kubernetes manifest: rendered from templates/weave-node/daemonset.yaml.j2 and validated against the
Kubernetes schemas (kubernetes-validate, offline) before anything is applied. No weave_node import."""

from __future__ import annotations

from typing import Any

import jinja2
import kubernetes_validate
import yaml

from deploys.paths import TEMPLATES

KUBERNETES_VERSION = "1.30"


class InvalidManifest(ValueError):
    pass


def render(**values: Any) -> str:
    env = jinja2.Environment(  # noqa: S701 - YAML, not HTML
        loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined, keep_trailing_newline=True
    )
    values.setdefault("mtu", None)
    values.setdefault("password_secret", "")
    text = env.get_template("weave-node/daemonset.yaml.j2").render(**values)
    validate(text)
    return text


def validate(text: str, version: str = KUBERNETES_VERSION) -> None:
    """Every document against the schemas of that Kubernetes version (strict: unknown fields are errors)."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError as exc:
        raise InvalidManifest(f"the manifest is not valid YAML: {exc}") from None
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            raise InvalidManifest(f"{doc.get('kind')} {where}: {exc.message}") from None
