"""Built-in plugins, written exactly as third-party plugins are."""
