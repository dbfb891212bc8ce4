"""cleanpipe: find label errors in classification datasets and train models that survive them."""

__version__ = "0.1.0"
