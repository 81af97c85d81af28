"""s4edge: metadata-only safety alerts from edge nodes to the city's control room."""

__version__ = "0.1.0"
