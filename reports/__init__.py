"""convrate.reports."""
