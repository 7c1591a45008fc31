#!/usr/bin/env node
// Starts @vercel/cosmosdb-server over HTTPS on loopback for the store contract suite.
//
//   node serve.js --cert CERT.pem --key KEY.pem [--host 127.0.0.1] [--port 0]
//
// Port 0 lets the OS pick a free port; the chosen one is printed as one JSON line,
// {"host": ..., "port": ...}, once the server listens. Unlike the package's own CLI, it
// keeps connections alive (the CLI closes every connection, which costs a TLS handshake per
// request) and serves the certificate it is given (the bundled one is expired and has no
// subjectAltName, so a client could not verify it).
"use strict";

const fs = require("fs");

// cosmosdb-server 1.0.1 answers a point read of a missing document with a 500 ("Cannot read
// properties of undefined"): its read handler dereferences the document before checking it
// exists. Cosmos DB answers 404 there, so wrap the handler before the router takes it.
const readDocument = require("@vercel/cosmosdb-server/lib/handler/read-document");
const partitionHeader = require("@vercel/cosmosdb-server/lib/utils/get-partition-from-header");
const readExisting = readDocument.default;
readDocument.default = (account, req, res, params) => {
  const collection = account.database(params.dbId).collection(params.collId);
  const header = partitionHeader.default(req);
  if (collection.read() && header !== undefined) {
    const partition = partitionHeader.parsePartitionKey(header, params.docId);
    if (!collection.document(params.docId, partition).read()) {
      res.statusCode = 404;
      return {
        code: "NotFound",
        message: "Entity with the specified id does not exist in the system.",
      };
    }
  }
  return readExisting(account, req, res, params);
};

const { createHttpsServer } = require("@vercel/cosmosdb-server");

function parseArgs(argv) {
  const args = { host: "127.0.0.1", port: 0 };
  for (let i = 0; i < argv.length; i += 2) {
    const [key, value] = [argv[i], argv[i + 1]];
    if (value === undefined) throw new Error(`${key} needs a value`);
    if (key === "--cert") args.cert = value;
    else if (key === "--key") args.key = value;
    else if (key === "--host") args.host = value;
    else if (key === "--port") args.port = parseInt(value, 10);
    else throw new Error(`unknown option ${key}`);
  }
  if (!args.cert || !args.key) throw new Error("--cert and --key are required");
  return args;
}

const args = parseArgs(process.argv.slice(2));
const server = createHttpsServer({
  cert: fs.readFileSync(args.cert),
  key: fs.readFileSync(args.key),
  keepAlive: true,
});
server.keepAliveTimeout = 60_000;
server.listen(args.port, args.host, () => {
  const { address, port } = server.address();
  process.stdout.write(`${JSON.stringify({ host: address, port })}\n`);
});

// The data is in memory and there is nothing to flush: stop at once, on a signal or when the
// parent closes our stdin (which it does by dying, too, so no server outlives a killed run).
process.on("SIGTERM", () => process.exit(0));
process.on("SIGINT", () => process.exit(0));
process.stdin.on("end", () => process.exit(0));
process.stdin.on("error", () => process.exit(0));
process.stdin.resume();
