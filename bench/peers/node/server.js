// The seed's Node.js runtime design, minimal: express, and a fresh vm2 VM on
// every request that evaluates the handler's source and calls it.
//
//     node server.js HANDLER_JS PORT [LANGUAGE_TITLE]
//
// Listens on 127.0.0.1:PORT. Any POST path takes {"params": {...}} and answers
// 200 {"result": <handler's return>} or 500 {"error": "..."}; the
// X-Cache-Control header is ignored (there is no cache).
//
// vm2 is pinned at 3.9.19, the release the seed's `^3.9.19` meant when it was
// written; the later 3.10-3.12 releases add hardening that made this peer
// about 2.5 times slower here, so the seed's version is the fairer to it.
// 3.9.19 has known sandbox escapes: this is a benchmark peer, on 127.0.0.1,
// running only the repository's own handler.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const crypto = require('node:crypto');
const express = require('express');
const { VM } = require('vm2');

const [handlerPath, portArg, titleArg] = process.argv.slice(2);
const port = Number(portArg);
if (!handlerPath || !Number.isInteger(port)) {
  console.error('usage: node server.js HANDLER_JS PORT [LANGUAGE_TITLE]');
  process.exit(2);
}
const title = titleArg || path.basename(path.dirname(path.resolve(handlerPath)));
// The session's id: our host's event carries the id of the session executed.
const session = crypto.randomUUID();

// vm2 runs scripts, not modules: turn the module's one `export default` into
// an assignment, once, at start. The script then ends by calling the handler
// with the event, so the call is inside vm.run and under its timeout (vm2's
// timeout does not cover a function called after run returns).
const source = fs.readFileSync(handlerPath, 'utf8');
const exported = /^export default /m;
if (!exported.test(source)) {
  console.error(`${handlerPath}: no line starting with "export default "`);
  process.exit(2);
}
const script =
  source.replace(exported, '__handler = ') + '\n;__handler(__event);\n';

// A deadline, as our host gives every execution (30 s by default there).
const TIMEOUT_MS = 30000;

const app = express();
app.disable('x-powered-by');
app.disable('etag');
app.use(express.json());

app.post(/.*/, async (req, res) => {
  const body = req.body;
  const params = body && typeof body === 'object' ? (body.params ?? {}) : undefined;
  if (!params || typeof params !== 'object' || Array.isArray(params)) {
    res.status(400).json({ error: 'the body must be {"params": {...}}' });
    return;
  }
  const event = { request_id: session, language_title: title, params, context: {} };
  try {
    // A fresh VM (a new V8 context) per request: nothing leaks between
    // executions, as in the seed.
    const vm = new VM({ timeout: TIMEOUT_MS, sandbox: { __event: event, __handler: undefined } });
    const result = await vm.run(script); // an async handler's promise is awaited
    res.json({ result });
  } catch (err) {
    const name = err && err.name ? err.name : 'Error';
    const message = err && err.message !== undefined ? err.message : String(err);
    res.status(500).json({ error: `${name}: ${message}` });
  }
});

// A body that is not JSON: answer JSON, not express's HTML page.
app.use((err, req, res, next) => {
  if (res.headersSent) return next(err);
  res.status(err.status || 500).json({ error: err.message || String(err) });
});

const server = app.listen(port, '127.0.0.1');
server.on('error', (err) => {
  console.error(err.message);
  process.exit(1);
});
