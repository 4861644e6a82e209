"""The click CLI: thin commands over the library API (parse, call, print, map errors to exit codes)."""
