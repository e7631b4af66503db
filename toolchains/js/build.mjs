// Builds a JavaScript function into a `lambda:function` component.
//
//   node build.mjs <workdir>
//
// Reads <workdir>/source.js and the WIT in <workdir>/wit, writes
// <workdir>/component.wasm. A source that does not parse, or whose top-level
// code fails while componentize-js pre-initialises it, exits with code 2 and
// prints {"message", "diagnostics": [{message, line, column}]} on stdout: the
// user's mistake. Any other failure exits with code 1.
import { readFile, writeFile, copyFile, mkdir } from 'node:fs/promises';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse } from 'acorn';
import { componentize } from '@bytecodealliance/componentize-js';

const here = dirname(fileURLToPath(import.meta.url));
const workdir = process.argv[2];
if (!workdir) {
  console.error('usage: node build.mjs <workdir>');
  process.exit(1);
}

// The host keeps the last 64 KiB of what a build prints: the report must fit.
const MAX_MESSAGE = 16 * 1024;

function userError(message, line, column) {
  if (message.length > MAX_MESSAGE) message = `${message.slice(0, MAX_MESSAGE)}\n... (cut)`;
  const diagnostics = [{ message, ...(line ? { line, column } : {}) }];
  process.stdout.write(JSON.stringify({ message, diagnostics }));
  process.exit(2);
}

const source = await readFile(join(workdir, 'source.js'), 'utf8');

// ES module or CommonJS? A source with import/export declarations is a
// module; one that only parses as a script (or has no exports) is CommonJS.
let moduleError = null;
let isModule = false;
try {
  const ast = parse(source, { ecmaVersion: 'latest', sourceType: 'module', locations: true });
  isModule = ast.body.some((node) => node.type.startsWith('Export') || node.type === 'ImportDeclaration');
} catch (error) {
  moduleError = error;
}
if (moduleError) {
  try {
    parse(source, { ecmaVersion: 'latest', sourceType: 'script' });
  } catch {
    // Neither: report the error as a module sees it (acorn columns are 0-based).
    const loc = moduleError.loc;
    userError(`SyntaxError: ${moduleError.message}`, loc?.line, loc ? loc.column + 1 : undefined);
  }
}

// CommonJS gets `module` and `exports`, and a `require` that explains itself.
// The prefix shares the first line, so line numbers stay the user's.
const commonJsPrefix =
  'const module = { exports: {} }; let exports = module.exports; ' +
  'function require(name) { throw new Error(`require("${name}") is not available: a function is one file`); } ';
const handlerJs = isModule ? source : `${commonJsPrefix}${source}\nexport default module.exports;\n`;
// The module's top-level code runs during pre-initialisation with one
// directory mapped in: componentize-js maps the current directory when it
// holds the source. That is src/, never the directory the component is
// written to, so the code cannot reach the output.
const src = join(workdir, 'src');
await mkdir(src);
await writeFile(join(src, 'handler.js'), handlerJs);
await copyFile(join(here, 'glue.js'), join(src, 'index.js'));
process.chdir(src);

let component;
try {
  ({ component } = await componentize({
    sourcePath: join(src, 'index.js'),
    witPath: join(workdir, 'wit'),
    worldName: 'function',
    // The world grants no HTTP: componentize-js would import wasi:http otherwise.
    disableFeatures: ['http', 'fetch-event'],
    // wizer keeps compiled code in a cache under HOME (XDG_CACHE_HOME): it
    // gets the host's choice of both, and no other variable of ours.
    env: Object.fromEntries(
      ['HOME', 'XDG_CACHE_HOME'].filter((k) => process.env[k]).map((k) => [k, process.env[k]]),
    ),
  }));
} catch (error) {
  // Top-level code of the user's module runs during pre-initialisation.
  const text = String(error?.message ?? error);
  const frame = /handler\.js:(\d+):(\d+)/.exec(text);
  userError(text.trim(), frame ? Number(frame[1]) : undefined, frame ? Number(frame[2]) : undefined);
}
await writeFile(join(workdir, 'component.wasm'), component);
