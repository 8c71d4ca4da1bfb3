"""A run gives the same weights whether its gallery features were extracted in the same process or
read from the feature cache (extraction builds a network, which draws from the global RNG)."""

from __future__ import annotations

import torch

from asymfuse.cloud.train.aff_config import TrainConfig
from asymfuse.cloud.train.aff_trainer import train_aff


def test_training_does_not_depend_on_a_warm_feature_cache(bench, tmp_path):
    cfg = TrainConfig(scheme="joint", data_root=str(bench.root), features_dir=str(tmp_path / "features"),
                      gallery_features=("gem_lite1",), embed_dim=16, mixer_layers=1, mixer_heads=2,
                      query_arch="efficientnet_lite0", query_pretrained=True, input_size=64, epochs=1,
                      batch_size=8, lr=0.01, progress=False, start_views=1)
    cold = train_aff(cfg, out_dir=tmp_path / "cold")  # extracts gem_lite1 (train, val, crop views)
    warm = train_aff(cfg, out_dir=tmp_path / "warm")  # reads the same stores from the cache
    for a, b in ((cold.query_net, warm.query_net), (cold.mixer, warm.mixer)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)
    assert cold.embedding_space_id == warm.embedding_space_id
