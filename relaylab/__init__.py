"""relaylab: dataset-wide explainable AI."""
