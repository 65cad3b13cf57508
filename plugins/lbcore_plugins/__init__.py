"""lbcore's built-in plugins, registered through the ``lbcore`` entry-point group."""
