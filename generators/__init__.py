"""ragkit stage family."""
