"""The four Tierflow services; each runs as ``python -m services.<name>``."""
