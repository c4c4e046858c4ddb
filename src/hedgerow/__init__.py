"""Hedgerow: Kubernetes-native edge orchestration."""
