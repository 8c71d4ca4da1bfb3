"""deploy/: the compose file parses and has Milvus standalone (etcd, MinIO, Milvus) plus two searcher
replicas whose commands the CLI accepts; the Dockerfile copies what exists. (`docker compose config`
needs the compose plugin, which CI machines may lack; this check needs only PyYAML.)"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def test_compose_has_milvus_standalone_and_two_searchers():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"etcd", "minio", "milvus", "searcher-1", "searcher-2"} <= set(services)
    milvus = services["milvus"]
    assert milvus["image"] == "milvusdb/milvus:v2.3.5" and milvus["command"] == ["milvus", "run", "standalone"]
    assert milvus["environment"] == {"ETCD_ENDPOINTS": "etcd:2379", "MINIO_ADDRESS": "minio:9000"}
    assert "19530:19530" in milvus["ports"] and set(milvus["depends_on"]) == {"etcd", "minio"}
    host_ports = set()
    for name in ("searcher-1", "searcher-2"):
        searcher = services[name]
        assert searcher["build"]["dockerfile"] == "deploy/Dockerfile" and "milvus" in searcher["depends_on"]
        host_ports.update(p.split(":")[0] for p in searcher["ports"])
        _check_serve_command(searcher["command"])
    assert host_ports == {"50051", "50052"}
    assert set(compose["volumes"]) == {"etcd-data", "minio-data", "milvus-data"}


def _check_serve_command(command: str) -> None:
    from asymfuse.cloud.cli.main import build_parser
    from asymfuse.cloud.index.milvus_config import MilvusTarget

    words = shlex.split(command)
    assert words[:2] == ["asymfuse", "serve"]
    args = build_parser().parse_args(words[1:])
    target = MilvusTarget.from_url(args.index)
    assert (target.uri, target.collection) == ("http://milvus:19530", "gallery") and args.bind == "0.0.0.0:50051"


def test_the_dockerfile_copies_what_exists():
    text = (DEPLOY / "Dockerfile").read_text()
    for src in re.findall(r"^COPY (.+) \S+$", text, flags=re.M):
        for path in src.split():
            assert (ROOT / path).exists(), f"deploy/Dockerfile copies {path}, which does not exist"
