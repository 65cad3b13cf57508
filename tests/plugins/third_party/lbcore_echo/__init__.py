"""lbcore-echo: an lbcore frontend that writes each sync to a file."""
