"""Explore: the Panel/HoloViews/Datashader explorer (`panel serve apps/explorer.py`, `relaylab serve`)."""
