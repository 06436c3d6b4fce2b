"""The results database (SQLite)."""
