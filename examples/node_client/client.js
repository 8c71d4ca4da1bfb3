// asymfuse searcher client in Node.js: loads proto/asymfuse/v1/searcher.proto (no generated code),
// calls GetInfo, Search (a float32 vector packed little-endian) and, with an API key, Upsert + Delete.
// Usage: node client.js HOST:PORT SPACE_ID DIM [API_KEY]
// Prints one JSON line with what it got; exits non-zero on any unexpected answer.
"use strict";
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO = path.join(__dirname, "..", "..", "proto", "asymfuse", "v1", "searcher.proto");
const [target, space, dimArg, apiKey] = process.argv.slice(2);
const dim = parseInt(dimArg, 10);

const definition = protoLoader.loadSync(PROTO, { keepCase: true, longs: String, enums: String, defaults: true });
const v1 = grpc.loadPackageDefinition(definition).asymfuse.v1;
const client = new v1.Searcher(target, grpc.credentials.createInsecure());

function call(method, request, metadata) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + 10000);
    client[method](request, metadata || new grpc.Metadata(), { deadline }, (err, res) => (err ? reject(err) : resolve(res)));
  });
}

function packed(values) {
  const buf = Buffer.alloc(values.length * 4);
  values.forEach((v, i) => buf.writeFloatLE(v, i * 4));
  return { data: buf, dim: values.length, dtype: "FLOAT32" };
}

async function main() {
  const out = {};
  const info = await call("GetInfo", {});
  out.info = { size: Number(info.size), dim: info.dim, embedding_space_id: info.embedding_space_id };
  const query = Array.from({ length: dim }, (_, i) => (i === 0 ? 1.0 : 0.0));
  const res = await call("Search", { embedding_space_id: space, query: packed(query), options: { k: 5 } });
  out.search = res.hits.map((h) => ({ id: Number(h.id), score: h.score, key: h.metadata.key || "" }));
  try {
    await call("Search", { embedding_space_id: "not-" + space, query: packed(query), options: { k: 5 } });
    out.mismatch = "OK";
  } catch (err) {
    out.mismatch = grpc.status[err.code];
  }
  if (apiKey) {
    const md = new grpc.Metadata();
    md.set("authorization", "Bearer " + apiKey);
    const up = await call("Upsert", { embedding_space_id: space, items: [{ id: "777777", vector: packed(query) }] }, md);
    out.upsert = { upserted: up.upserted, size: Number(up.size) };
    const top = await call("Search", { embedding_space_id: space, query: packed(query), options: { k: 1 } });
    out.top_after_upsert = Number(top.hits[0].id);
    const del = await call("Delete", { embedding_space_id: space, ids: ["777777"] }, md);
    out.deleted = del.deleted;
  }
  console.log(JSON.stringify(out));
}

main().catch((err) => {
  console.error("node client failed:", err.message || err);
  process.exit(1);
});
