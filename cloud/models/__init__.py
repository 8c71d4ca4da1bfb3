"""Query nets, backbones, pooling and checkpoints."""

from asymfuse.cloud.models.backbones import TRUNKS, create_trunk, load_efficientnet_lite
from asymfuse.cloud.models.checkpoint import load_query_net, save_query_net
from asymfuse.cloud.models.pooling import GeM, gem
from asymfuse.cloud.models.query_net import QUERY_NETS, QueryNet, create_query_net

__all__ = ["GeM", "QUERY_NETS", "QueryNet", "TRUNKS", "create_query_net", "create_trunk", "gem",
           "load_efficientnet_lite", "load_query_net", "save_query_net"]
