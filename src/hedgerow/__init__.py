"""Hedgerow: Kubernetes-native edge orchestration."""

# The release: `hedgerow --version`, the agentVersion devices report, and (checked by
# tests/test_cli_edges.py) the version pyproject.toml gives the distribution.
__version__ = "0.1.0"
