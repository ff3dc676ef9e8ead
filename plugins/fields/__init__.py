"""Built-in fields."""
