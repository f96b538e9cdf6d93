"""relaylab: dataset-wide explainable AI."""

__version__ = "0.1.0"
