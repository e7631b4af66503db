// Glue between the `lambda:function` world and a user's JavaScript handler,
// for a function's own component (tier 1).
//
// build.mjs writes the user's source beside this file as `handler.js` (a
// CommonJS source wrapped so that `module.exports` becomes the default
// export) and componentizes this file; call.js does the rest.
import * as user from './handler.js';
import { callHandler, describe, pickHandler } from './call.js';

const handler = pickHandler(user);

// The first frame in the user's file: `fn@handler.js:LINE:COLUMN`.
function locate(stack) {
  const frame = /handler\.js:(\d+):(\d+)/.exec(stack);
  return frame ? { line: Number(frame[1]), column: Number(frame[2]) } : null;
}

export function handle(inv) {
  return callHandler(handler, inv, (error) => describe(error, locate));
}
