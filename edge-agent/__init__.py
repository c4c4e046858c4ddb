"""Hedgerow edge agent: the device-side converge loop, runtimes and local services."""
