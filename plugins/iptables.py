"""Built-in lbcore plugin (being written; registers nothing yet)."""
