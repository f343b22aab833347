"""Where vectors go: Parquet parts readers see whole or not at all, then a manifest."""
