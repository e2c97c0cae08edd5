"""The default quality configuration (``quality.yaml``), shipped as package data."""
