"""Series: when a series is complete, which of its frames may enter the volume, and the volume."""
