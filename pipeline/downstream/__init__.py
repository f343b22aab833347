"""What to do with an output: nearest neighbours and k-means clusters."""
