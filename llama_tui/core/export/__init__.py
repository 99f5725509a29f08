"""Exports: a fleet shape as manifests for other platforms.

    kubernetes.py   StatefulSet, Services, NetworkPolicy, NGINX ConfigMap and Deployment (`llama-tui export kubernetes`)

commands/ uses the names exported here (`from llama_tui.core import export`).
"""

from llama_tui.core.export.kubernetes import Export, KubeOptions, build, manifests, to_yaml

__all__ = ["Export", "KubeOptions", "build", "manifests", "to_yaml"]
