"""Everything about drawings before they meet a model: formats, normalisation, encoding, caches.

Nothing in this package imports the model (arrows point one way, see docs/architecture.md).
"""
