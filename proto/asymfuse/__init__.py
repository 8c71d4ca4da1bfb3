"""Package of the v1 wire schema (generated modules live here)."""
