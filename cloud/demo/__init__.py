"""The end-to-end demo (``asymfuse demo``): grows with every capability."""
