"""Built-in adapters, one module per legacy system. Installed as the package `decom.adapters`."""
