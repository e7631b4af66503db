// The JavaScript interpreter (tier 0): one component for every JavaScript
// function. Each call takes the function's source from the `script`
// import, evaluates it in the fresh instance and calls its handler, so a
// new function runs at once, before its own component (tier 1) is built.
//
// An ES module cannot be evaluated from text here (the engine has no
// loader for it), so its import and export declarations are rewritten
// into a function body, keeping every line where it was: exports become
// properties of `$$e`; the one importable module, `lambda:function/host`,
// becomes `$$host`. Any other import is refused, as the build refuses it.
import { parse } from './acorn.mjs';
import { read as readScript } from 'lambda:function/script@0.1.0';
import * as host from 'lambda:function/host@0.1.0';
import { analyse, require } from './source.js';
import { callHandler, describe, failure, pickHandler } from './call.js';

// The one module a function may import, named as the build needs it.
const HOST = new Set(['lambda:function/host@0.1.0']);
const AsyncFunction = (async () => {}).constructor;
// Both kinds of source run as module code does: strict, with top-level
// await. The directive shares the user's first line.
const STRICT = "'use strict'; ";

export async function handle(inv) {
  const { text, mode } = readScript();
  // Parsing with acorn costs milliseconds in this engine: `check` does it
  // once and answers the function body that `run-prepared` evaluates.
  const prepared = mode === 'run-prepared' ? JSON.parse(text) : prepare(text);
  const exports = await evaluate(prepared);
  if (mode === 'check') return JSON.stringify(JSON.stringify(prepared));
  return callHandler(pickHandler(exports), inv, describeHandlerError);
}

// The source as a function body: `{ kind: 'module' | 'script', body }`.
function prepare(text) {
  const analysed = analyse(text, parse);
  if (analysed.error) throw failure(analysed.error);
  if (analysed.kind === 'script') return { kind: 'script', body: text };
  const rewritten = asFunctionBody(text, analysed.ast);
  if (rewritten.error) throw failure(rewritten.error);
  return { kind: 'module', body: rewritten.body };
}

// Runs the body's top-level code; returns its exports as a module
// namespace would hold them (CommonJS's `module.exports` as `default`).
async function evaluate({ kind, body }) {
  let names;
  let args;
  let exports;
  if (kind === 'module') {
    exports = {};
    names = ['$$e', '$$host'];
    args = [exports, host];
  } else {
    const module = { exports: {} };
    names = ['module', 'exports', 'require'];
    args = [module, module.exports, require];
    exports = { get default() { return module.exports; } };
  }
  let run;
  try {
    run = new AsyncFunction(...names, STRICT + body);
  } catch (error) {
    // What acorn accepts but strict code does not (a script's `with`).
    throw failure(describe(error, () => positionOf(error)));
  }
  try {
    await run(...args);
  } catch (error) {
    throw failure(describeHandlerError(error));
  }
  return exports;
}

// The error of a handler as a built function reports it: frames of the
// evaluated source name `handler.js` and the user's lines.
function describeHandlerError(error) {
  const info = describe(error, locate);
  info.stackTrace = info.stackTrace?.replace(FRAMES, (_, line, column) => {
    const position = userPosition(Number(line), Number(column));
    return position ? `handler.js:${position.line}:${position.column}` : 'handler.js';
  });
  return info;
}

// Where an error of the evaluated source points, in the user's lines: the
// first frame of the evaluated code (`fn@index.js line 42 > AsyncFunction:5:9`),
// whose source starts two lines before the user's first line.
const FRAME = /> AsyncFunction:(\d+):(\d+)/;
const FRAMES = /index\.js line \d+ > AsyncFunction:(\d+):(\d+)/g;
const LINES_BEFORE = 2;

function locate(stack) {
  const frame = FRAME.exec(stack);
  return frame ? userPosition(Number(frame[1]), Number(frame[2])) : null;
}

function positionOf(error) {
  return typeof error.lineNumber === 'number'
    ? userPosition(error.lineNumber, error.columnNumber)
    : null;
}

function userPosition(line, column) {
  const userLine = line - LINES_BEFORE;
  if (userLine < 1) return null;
  return { line: userLine, column: userLine === 1 ? Math.max(1, column - STRICT.length) : column };
}

// The module's declarations rewritten in place; `{ body }` or `{ error }`.
function asFunctionBody(text, ast) {
  const edits = [];
  const assignments = [];
  const exportAs = (name, local) => assignments.push(`$$e[${JSON.stringify(name)}] = ${local};`);
  for (const node of ast.body) {
    switch (node.type) {
      case 'ImportDeclaration': {
        if (!HOST.has(node.source.value)) return { error: notOneFile(node, node.source.value) };
        const bindings = [];
        for (const specifier of node.specifiers) {
          if (specifier.type === 'ImportNamespaceSpecifier') {
            bindings.push(`${specifier.local.name} = $$host`);
          } else if (specifier.type === 'ImportSpecifier') {
            bindings.push(`${specifier.local.name} = $$host[${JSON.stringify(nameOf(specifier.imported))}]`);
          } else {
            return { error: at(specifier, `SyntaxError: ${node.source.value} has no default export`) };
          }
        }
        const declaration = bindings.length ? `const ${bindings.join(', ')};` : '';
        edits.push([node.start, node.end, sameShape(declaration, text.slice(node.start, node.end))]);
        break;
      }
      case 'ExportDefaultDeclaration': {
        const declaration = node.declaration;
        const named = declaration.id && /^(Function|Class)Declaration$/.test(declaration.type);
        const keyword = text.slice(node.start, declaration.start);
        if (named) {
          // `export default function f() {}`: f stays a hoisted declaration.
          edits.push([node.start, declaration.start, sameShape('', keyword)]);
          exportAs('default', declaration.id.name);
        } else {
          edits.push([node.start, declaration.start, sameShape('$$e.default = ', keyword)]);
          // An anonymous declaration becomes an expression: end it.
          if (declaration.type.endsWith('Declaration')) edits.push([declaration.end, declaration.end, ';']);
        }
        break;
      }
      case 'ExportNamedDeclaration': {
        if (node.source) return { error: notOneFile(node, node.source.value) };
        if (node.declaration) {
          edits.push([node.start, node.declaration.start, sameShape('', text.slice(node.start, node.declaration.start))]);
          for (const name of declaredNames(node.declaration)) exportAs(name, name);
        } else {
          edits.push([node.start, node.end, sameShape('', text.slice(node.start, node.end))]);
          for (const specifier of node.specifiers) exportAs(nameOf(specifier.exported), specifier.local.name);
        }
        break;
      }
      case 'ExportAllDeclaration':
        return { error: notOneFile(node, node.source.value) };
      default:
        break;
    }
  }
  let body = text;
  for (const [start, end, replacement] of edits.sort((a, b) => b[0] - a[0])) {
    body = body.slice(0, start) + replacement + body.slice(end);
  }
  return { body: `${body}\n;${assignments.join(' ')}` };
}

// `replacement` in the place of `original`, keeping its line breaks (and,
// where it is shorter, its width), so the lines after it do not move.
function sameShape(replacement, original) {
  const breaks = original.split('\n').length - 1;
  const width = original.length - breaks;
  return replacement + ' '.repeat(Math.max(0, width - replacement.length)) + '\n'.repeat(breaks);
}

function declaredNames(declaration) {
  if (declaration.id) return [declaration.id.name];
  return (declaration.declarations ?? []).flatMap((d) => patternNames(d.id));
}

function patternNames(pattern) {
  switch (pattern?.type) {
    case 'Identifier':
      return [pattern.name];
    case 'ObjectPattern':
      return pattern.properties.flatMap((p) => patternNames(p.type === 'RestElement' ? p.argument : p.value));
    case 'ArrayPattern':
      return pattern.elements.flatMap(patternNames);
    case 'AssignmentPattern':
      return patternNames(pattern.left);
    case 'RestElement':
      return patternNames(pattern.argument);
    default:
      return [];
  }
}

function nameOf(node) {
  return node.type === 'Identifier' ? node.name : node.value;
}

function notOneFile(node, name) {
  return at(node, `Error: import of "${name}" is not available: a function is one file`);
}

function at(node, message) {
  return { message, line: node.loc.start.line, column: node.loc.start.column + 1 };
}
