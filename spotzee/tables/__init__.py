"""State-store implementations behind streams.interface.Table."""
