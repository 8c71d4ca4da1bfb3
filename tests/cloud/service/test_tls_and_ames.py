"""TLS with a self-signed certificate made here, and the re-ranked search equal to calling AMES directly
(faiss and Milvus backends); a Milvus searcher refuses a missing or other AMES checkpoint."""

from __future__ import annotations

import datetime
import ipaddress

import numpy as np
import pytest

from asymfuse.cloud.ames.checkpoint import load_ames
from asymfuse.cloud.ames.options import RerankOptions
from asymfuse.cloud.ames.packed_store import PackedLocalStore
from asymfuse.cloud.ames.rerank import rerank
from asymfuse.cloud.ames.scorer import AMESScorer
from asymfuse.cloud.ames.sources import ArrayLocals
from asymfuse.cloud.service.config import ServerConfig
from asymfuse.cloud.service.server import create_server
from asymfuse.edge.errors import RemoteError

from .conftest import (
    DIM,
    L,
    LOCAL_DIM,
    N,
    client,
    copy_folder,
    gallery_ids,
    local_features,
    milvus_collection,
    unit_vectors,
)


def self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(key_pem)
    return tmp_path / "cert.pem", tmp_path / "key.pem", cert_pem


def test_tls_round_trip_and_plaintext_refused(tmp_path, flat_folder, gallery):
    cert, key, cert_pem = self_signed(tmp_path)
    folder = copy_folder(flat_folder, tmp_path / "index")
    server, port = create_server(ServerConfig(index_dir=str(folder), tls_cert=str(cert), tls_key=str(key),
                                              auth_reads=True, api_keys=("k",), snapshot_interval_s=0))
    try:
        q = unit_vectors(1, DIM, seed=4)[0]
        with client(port, key="k", tls=True, root_certificates=cert_pem,
                    options=(("grpc.ssl_target_name_override", "localhost"),)) as c:
            hits = c.search(q, k=3)
        assert [h.id for h in hits] == np.argsort(-(gallery @ q))[:3].tolist()
        with client(port, key=None, tls=True, root_certificates=cert_pem,
                    options=(("grpc.ssl_target_name_override", "localhost"),)) as c:
            with pytest.raises(RemoteError, match="UNAUTHENTICATED"):  # auth_reads
                c.search(q, k=3)
        with client(port, key="k") as c:  # plaintext client against a TLS port
            with pytest.raises(RemoteError, match="UNAVAILABLE"):
                c.search(q, k=3)
    finally:
        server.stop(0)


@pytest.mark.parametrize("scorer,resident,backend", [("fp32", False, "faiss"), ("batched", True, "faiss"),
                                                     ("fp32", False, "milvus")])
def test_reranked_search_equals_calling_ames_directly(request, tmp_path, ames_folder, gallery, scorer, resident,
                                                      backend):
    """Also on the Milvus backend: the AMES codes come from the descriptor collection, fetched per query."""
    folder, ckpt, packed_dir = ames_folder
    if backend == "milvus":
        target = milvus_collection(request.getfixturevalue("milvus_target"), folder.parent / "fused", ames=ckpt,
                                   packed=packed_dir)
        config = ServerConfig(index_dir=target.url, ames_checkpoint=str(ckpt), rerank_top_m=40, scorer=scorer)
    else:
        config = ServerConfig(index_dir=str(copy_folder(folder, tmp_path / "index")), rerank_top_m=40,
                              snapshot_interval_s=0, scorer=scorer, resident_gallery=resident)
    server, port = create_server(config)
    model, info = load_ames(ckpt, variant="binary")
    scorer = AMESScorer(model)
    rng = np.random.default_rng(7)
    try:
        with client(port) as c, PackedLocalStore.open(packed_dir, model=model) as packed:
            assert c.info()["ames_enabled"] and c.info()["ames_local_dim"] == LOCAL_DIM
            row_of = {key: r for r, key in enumerate(packed.ids)}
            for qi in range(4):
                q = gallery[qi * 37] + 0.3 * unit_vectors(1, DIM, seed=qi)[0]
                q /= np.linalg.norm(q)
                desc = rng.standard_normal((L, LOCAL_DIM)).astype(np.float32)
                valid = np.arange(L) < 4 + qi
                hits = c.search(q, k=20, locals_=desc, pad=~valid)
                # direct: global top-40 by NumPy, gallery locals by row, AMES via rerank()
                g = gallery @ q
                cand = np.argsort(-g, kind="stable")[:40]
                rows = np.array([row_of.get(gallery_ids(N)[i], -1) for i in cand])
                codes_known = rows >= 0
                locals_ = _candidate_locals(rows)
                with pytest.warns(UserWarning, match="no local descriptors"):
                    want = rerank(desc, np.arange(40), g[cand], options=RerankOptions.from_info(info, top_m=40),
                                  scorer=scorer, gallery=locals_, q_pad=~valid)
                assert [h.id for h in hits] == cand[want.ids[:20]].tolist()
                np.testing.assert_allclose([h.score for h in hits], want.scores[:20], atol=1e-5)
                assert all(h.reranked for h in hits) and codes_known.sum() >= 30
                plain = c.search(q, k=20, locals_=desc, pad=~valid, rerank=False)
                assert [h.id for h in plain] == cand[:20].tolist() and not any(h.reranked for h in plain)
    finally:
        server.stop(0)
    if backend == "milvus":
        _check_checkpoint_refusals(tmp_path, config)


def _check_checkpoint_refusals(tmp_path, config):
    """A Milvus index built with AMES refuses to serve without its checkpoint, or with another one."""
    import dataclasses

    from asymfuse.cloud.ames.checkpoint import save_ames
    from asymfuse.cloud.ames.model import create_ames
    from asymfuse.edge.errors import ConfigError

    with pytest.raises(ConfigError, match="built with AMES.*--ames"):
        create_server(dataclasses.replace(config, ames_checkpoint=None))
    other = save_ames(create_ames(local_dim=LOCAL_DIM, binary=True, seed=5, layers=1, ffn_dim=64).eval(),
                      tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="is not the AMES checkpoint"):
        create_server(dataclasses.replace(config, ames_checkpoint=str(other)))


def _candidate_locals(rows):
    """Reference gallery locals, independent of the packed store: the candidates' original float
    descriptors (the binary model binarises them as it projects), none for a candidate without codes."""
    feats = local_features(N - 50, seed=1)
    desc = np.zeros((rows.size, L, LOCAL_DIM), np.float32)
    pad = np.ones((rows.size, L), bool)
    known = rows >= 0
    desc[known] = feats.descriptors[rows[known]]
    pad[known] = feats.mask[rows[known]]
    return ArrayLocals(desc, pad)

