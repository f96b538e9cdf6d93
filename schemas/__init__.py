"""relaylab's JSON Schemas; this folder is installed as the package `relaylab.schemas` so `validate` can load them."""
