"""Test fixtures (placeholder until written)."""
