"""convrate.models."""
