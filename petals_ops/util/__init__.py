"""Small utilities with no petals-ops dependencies: typed errors, files, processes, output."""
