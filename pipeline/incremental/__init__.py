"""What the last run left that this one keeps: its output for unchanged files, its vectors for unchanged rows."""
