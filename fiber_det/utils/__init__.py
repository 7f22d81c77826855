"""Small utilities shared by the package, tools and tests."""
