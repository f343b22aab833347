"""Vectors already paid for: the disk cache, its check and repair, and claims so each text is paid once."""
