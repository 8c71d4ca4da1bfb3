"""Gallery feature extraction: the extractor zoo, the feature store and the extraction driver."""

from asymfuse.edge.lazy import lazy_surface

__all__, __getattr__, __dir__ = lazy_surface(__name__, {
    "ExtractOptions": "asymfuse.cloud.features.extract",
    "FEATURE_EXTRACTORS": "asymfuse.cloud.features.registry",
    "FeatureExtractor": "asymfuse.cloud.features.base",
    "FeatureStore": "asymfuse.cloud.features.store",
    "GalleryTable": "asymfuse.cloud.features.gallery_table",
    "GlobalFeatures": "asymfuse.cloud.features.base",
    "LocalFeatures": "asymfuse.cloud.features.base",
    "create_feature_extractor": "asymfuse.cloud.features.registry",
    "extract_dataset": "asymfuse.cloud.features.extract_dataset",
    "extract_sharded": "asymfuse.cloud.features.extract_sharded",
    "extract_to_store": "asymfuse.cloud.features.extract",
    "load_gallery_table": "asymfuse.cloud.features.gallery_table",
    "store_path": "asymfuse.cloud.features.layout",
})
