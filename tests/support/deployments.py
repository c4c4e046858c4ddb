"""Files a user writes by hand into a device's deployments/ folder."""

from __future__ import annotations


def local_deployment(thing: str, name: str = "on-site", *, deployment: str = "by-hand",
                     script: str = "sleep 60") -> str:
    """A local deployment file: one Component (`name` 1.0.0, whose run step is `script`)
    and a Deployment (`deployment`) of it to `thing`."""
    return f"""apiVersion: hedgerow.dev/v1alpha1
kind: Component
metadata: {{name: {name}-1.0.0}}
spec:
  name: {name}
  version: 1.0.0
  manifests:
    - lifecycle:
        run: {{script: "{script}"}}
---
apiVersion: hedgerow.dev/v1alpha1
kind: Deployment
metadata: {{name: {deployment}}}
spec:
  target: {{thing: {thing}}}
  components:
    - {{name: {name}, version: 1.0.0}}
"""
