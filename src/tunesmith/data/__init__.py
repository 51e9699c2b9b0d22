"""Data stage: read any common instruction format, validate, clean, render with chat templates."""
