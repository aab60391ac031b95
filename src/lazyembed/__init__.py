"""lazyembed: local sentence embeddings that hold the model in RAM only while it is used."""
__version__ = "0.1.0.dev0"
