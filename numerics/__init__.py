"""convrate.numerics."""
