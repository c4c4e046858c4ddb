"""Hedgerow controller: the kopf operator that turns CRDs into per-device desired state."""
