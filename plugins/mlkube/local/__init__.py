"""The embedded backend: steps as local processes, a model server on loopback."""
