"""Gallery feature extraction: the extractor zoo, the feature store and the extraction driver."""
