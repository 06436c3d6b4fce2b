"""Reports read the store only: Markdown tables and tidy exports."""
