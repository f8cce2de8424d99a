"""The three marketplace services; none imports another."""
