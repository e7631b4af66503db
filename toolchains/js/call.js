// What a built function (glue.js) and the interpreter (interpreter.js) share:
// finding the handler among a module's exports, building the event of
// API.md, and turning the handler's answer into JSON text or an
// `error-info`.

export function pickHandler(exports) {
  for (const candidate of [exports?.handler, exports?.default, exports?.default?.handler]) {
    if (typeof candidate === 'function') return candidate;
  }
  return null;
}

// Calls `handler` with the event of `inv`. `describeError(error)` says
// what a thrown error was, as `describe` does.
export async function callHandler(handler, inv, describeError) {
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
    throw failure(describeError(error));
  }
  try {
    return toJson(result);
  } catch (error) {
    throw failure({ message: `the handler's result is not JSON: ${error.message}` });
  }
}

// componentize-js turns a thrown object's `payload` into the `err` case.
export function failure(info) {
  return {
    payload: {
      message: info.message,
      stackTrace: info.stackTrace,
      line: info.line,
      column: info.column,
    },
  };
}

// `locate(stack)` finds the first frame in the user's source:
// `{ line, column }` or null.
export function describe(error, locate) {
  const isError = error instanceof Error;
  const message = isError ? `${error.name}: ${error.message}` : `Uncaught ${stringify(error)}`;
  const stackTrace = isError && typeof error.stack === 'string' ? error.stack : undefined;
  const frame = stackTrace ? locate(stackTrace) : null;
  return { message, stackTrace, line: frame?.line, column: frame?.column };
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
