"""The pure core: event vocabulary, manifests and the fold. No I/O, no locks."""
