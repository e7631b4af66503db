// How the toolchain (build.mjs, under node) and the interpreter
// (interpreter.js, in the component) read a function's source, so that both
// tiers accept and refuse the same sources with the same message.
//
// A source with import or export declarations is an ES module; one that
// only parses as a script, or has neither, is CommonJS. `parse` is acorn's.
export function analyse(source, parse) {
  let moduleError = null;
  try {
    const ast = parse(source, { ecmaVersion: 'latest', sourceType: 'module', locations: true });
    const isModule = ast.body.some(
      (node) => node.type.startsWith('Export') || node.type === 'ImportDeclaration',
    );
    return isModule ? { kind: 'module', ast } : { kind: 'script' };
  } catch (error) {
    moduleError = error;
  }
  try {
    parse(source, { ecmaVersion: 'latest', sourceType: 'script' });
    return { kind: 'script' };
  } catch {
    // Neither: the error as a module sees it (acorn columns are 0-based).
    const loc = moduleError.loc;
    return {
      error: {
        message: `SyntaxError: ${moduleError.message}`,
        line: loc?.line,
        column: loc ? loc.column + 1 : undefined,
      },
    };
  }
}

// CommonJS gets `module` and `exports`, and a `require` that explains itself.
export function require(name) {
  throw new Error(`require("${name}") is not available: a function is one file`);
}
