"""fitloop."""
