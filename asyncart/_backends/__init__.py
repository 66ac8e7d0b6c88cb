"""Storage backends: dumb stores of opaque log records and content-addressed blobs."""
