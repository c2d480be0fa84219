"""The built-in synthetic multi-view actor (the embedded default dataset) and other identities that drive it."""
