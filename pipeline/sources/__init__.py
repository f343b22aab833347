"""Where rows come from: input files read as Arrow record batches, their formats, and partitions of them."""
