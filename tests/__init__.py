"""segexport's tests: each file's docstring says what it covers."""
