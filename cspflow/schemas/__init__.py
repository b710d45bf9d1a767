"""Pydantic documents: the contracts between stages (one module per stage)."""
