"""Prefect flows and the `embedpipe` command line: thin wrappers over `pipeline`."""
