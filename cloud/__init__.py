"""asymfuse.cloud: gallery features, AFF training, AMES, indexing and the searcher."""
