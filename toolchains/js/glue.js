// Glue between the `lambda:function` world and a user's JavaScript handler.
//
// build.mjs writes the user's source beside this file as `handler.js` (a
// CommonJS source wrapped so that `module.exports` becomes the default
// export) and componentizes this file. `handle` builds the event of API.md,
// awaits the handler, and turns its answer into JSON text or an
// `error-info`.
import * as user from './handler.js';

const handler = pickHandler(user);

function pickHandler(module) {
  for (const candidate of [module.handler, module.default, module.default?.handler]) {
    if (typeof candidate === 'function') return candidate;
  }
  return null;
}

export async function handle(inv) {
  if (handler === null) {
    throw failure({
      message:
        'no handler: export `default` or `handler` as a function, or assign one to module.exports',
    });
  }
  const event = {
    params: JSON.parse(inv.params),
    context: JSON.parse(inv.context),
    request_id: inv.requestId,
    language_title: inv.languageTitle,
  };
  let result;
  try {
    result = await handler(event);
  } catch (error) {
    throw failure(describe(error));
  }
  try {
    return toJson(result);
  } catch (error) {
    throw failure({ message: `the handler's result is not JSON: ${error.message}` });
  }
}

// componentize-js turns a thrown object's `payload` into the `err` case.
function failure(info) {
  return {
    payload: {
      message: info.message,
      stackTrace: info.stackTrace,
      line: info.line,
      column: info.column,
    },
  };
}

function describe(error) {
  const isError = error instanceof Error;
  const message = isError ? `${error.name}: ${error.message}` : `Uncaught ${stringify(error)}`;
  const stackTrace = isError && typeof error.stack === 'string' ? error.stack : undefined;
  // The first frame in the user's file: `fn@handler.js:LINE:COLUMN`.
  const frame = stackTrace && /handler\.js:(\d+):(\d+)/.exec(stackTrace);
  return {
    message,
    stackTrace,
    line: frame ? Number(frame[1]) : undefined,
    column: frame ? Number(frame[2]) : undefined,
  };
}

function stringify(value) {
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

// JSON.stringify silently drops functions and symbols and turns NaN into
// null; a result that is not plain JSON is an error instead, as in Python
// and Rust. A handler that returns nothing answers `null`.
function toJson(result) {
  if (result === undefined) return 'null';
  return JSON.stringify(result, (key, value) => {
    const type = typeof value;
    if (type === 'function' || type === 'symbol') {
      throw new TypeError(`${key ? `"${key}" is` : 'it is'} a ${type}`);
    }
    if (type === 'number' && !Number.isFinite(value)) {
      throw new TypeError(`${key ? `"${key}" is` : 'it is'} ${value}`);
    }
    if (value === undefined && key !== '') {
      throw new TypeError(`"${key}" is undefined`);
    }
    return value;
  });
}
