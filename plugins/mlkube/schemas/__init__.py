"""Schemas ``mlkube argo lint`` validates against, shipped as package data (see README.md)."""
