"""Drop-in layers for other libraries' APIs (``evidex.compat.hnswlib``)."""
