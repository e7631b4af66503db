// Builds a JavaScript function into a `lambda:function` component, or, for
// a source that registers a `fetch` listener, into a `wasi:http/proxy` one.
//
//   node build.mjs <workdir>
//   node build.mjs <workdir> --interpreter
//
// Reads <workdir>/source.js and the WIT in <workdir>/wit, writes
// <workdir>/component.wasm. With --interpreter it builds the language's
// interpreter (tier 0, interpreter.js) instead, which runs a source given at
// run time; <workdir>/source.js is not read. A source that does not parse, or whose top-level
// code fails while componentize-js pre-initialises it, exits with code 2 and
// prints {"message", "diagnostics": [{message, line, column}]} on stdout: the
// user's mistake. Any other failure exits with code 1.
import { readFile, writeFile, copyFile, mkdir } from 'node:fs/promises';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse } from 'acorn';
import { componentize } from '@bytecodealliance/componentize-js';
import { analyse } from './source.js';

const here = dirname(fileURLToPath(import.meta.url));
const [workdir, mode] = process.argv.slice(2);
if (!workdir || (mode !== undefined && mode !== '--interpreter')) {
  console.error('usage: node build.mjs <workdir> [--interpreter]');
  process.exit(1);
}

// `addEventListener('fetch', ...)`, in any quotes: the mark of an HTTP function.
const FETCH_LISTENER = /\baddEventListener\s*\(\s*(['"`])fetch\1/;
// The wasi:http version of StarlingMonkey's incoming handler in the pinned
// componentize-js.
const HTTP_WASI_VERSION = '0.2.10';

// The host keeps the last 64 KiB of what a build prints: the report must fit.
const MAX_MESSAGE = 16 * 1024;

function userError(message, line, column) {
  if (message.length > MAX_MESSAGE) message = `${message.slice(0, MAX_MESSAGE)}\n... (cut)`;
  const diagnostics = [{ message, ...(line ? { line, column } : {}) }];
  process.stdout.write(JSON.stringify({ message, diagnostics }));
  process.exit(2);
}

if (mode === '--interpreter') {
  // Our own code: acorn (to tell modules from scripts, as below) goes in
  // beside it.
  const src = await prepareSources(workdir, 'interpreter.js');
  await copyFile(join(here, 'node_modules/acorn/dist/acorn.mjs'), join(src, 'acorn.mjs'));
  await writeFile(join(workdir, 'component.wasm'), await build(src, 'interpreter'));
  process.exit(0);
}

const source = await readFile(join(workdir, 'source.js'), 'utf8');

const analysed = analyse(source, parse);
if (analysed.error) {
  const { message, line, column } = analysed.error;
  userError(message, line, column);
}
const isModule = analysed.kind === 'module';

// A source that registers a `fetch` listener is an HTTP function: a
// wasi:http/proxy component whose requests StarlingMonkey hands to the
// listener (componentize-js's fetch-event), with `fetch` for outbound calls.
// The host applies the same test (host/src/toolchain/js.rs).
if (FETCH_LISTENER.test(source)) {
  const src = await prepareSources(workdir, null);
  await writeFile(join(src, 'index.js'), source);
  let component;
  try {
    component = await buildHttp(src, await httpWit(workdir));
  } catch (error) {
    const text = String(error?.message ?? error);
    const frame = /index\.js:(\d+):(\d+)/.exec(text);
    userError(text.trim(), frame ? Number(frame[1]) : undefined, frame ? Number(frame[2]) : undefined);
  }
  await writeFile(join(workdir, 'component.wasm'), component);
  process.exit(0);
}

// CommonJS gets `module` and `exports`, and a `require` that explains itself.
// The prefix shares the first line, so line numbers stay the user's.
const commonJsPrefix =
  "import { require } from './source.js'; const module = { exports: {} }; let exports = module.exports; ";
const handlerJs = isModule ? source : `${commonJsPrefix}${source}\nexport default module.exports;\n`;
// The module's top-level code runs during pre-initialisation with one
// directory mapped in: componentize-js maps the current directory when it
// holds the source. That is src/, never the directory the component is
// written to, so the code cannot reach the output.
const src = await prepareSources(workdir, 'glue.js');
await writeFile(join(src, 'handler.js'), handlerJs);

let component;
try {
  component = await build(src, 'function');
} catch (error) {
  // Top-level code of the user's module runs during pre-initialisation.
  const text = String(error?.message ?? error);
  const frame = /handler\.js:(\d+):(\d+)/.exec(text);
  userError(text.trim(), frame ? Number(frame[1]) : undefined, frame ? Number(frame[2]) : undefined);
}
await writeFile(join(workdir, 'component.wasm'), component);

// <workdir>/src with our entry point as index.js and what it imports (with
// no entry, the caller writes index.js).
async function prepareSources(workdir, entry) {
  const src = join(workdir, 'src');
  await mkdir(src);
  if (entry) {
    await copyFile(join(here, entry), join(src, 'index.js'));
    for (const shared of ['call.js', 'source.js']) {
      await copyFile(join(here, shared), join(src, shared));
    }
  }
  process.chdir(src);
  return src;
}

// The WIT of an HTTP function: a world that is wasi:http/proxy, at the
// version StarlingMonkey's fetch-event answers (0.2.10). The pinned jco
// ships the WASI 0.2.12 packages; their stable interfaces are those of
// 0.2.10 (0.2.11 and 0.2.12 only added unstable-gated items), so they are
// copied with the version set to 0.2.10. The host checks what comes out
// like any component: its world and its imports.
async function httpWit(workdir) {
  const wit = join(workdir, 'http-wit');
  const builtin = join(here, 'node_modules/@bytecodealliance/jco/lib/wit/builtin/0.2.12');
  for (const pkg of ['wasi-cli', 'wasi-clocks', 'wasi-filesystem', 'wasi-http', 'wasi-io', 'wasi-random', 'wasi-sockets']) {
    const text = await readFile(join(builtin, pkg, 'package.wit'), 'utf8');
    await mkdir(join(wit, 'deps', pkg), { recursive: true });
    await writeFile(join(wit, 'deps', pkg, 'package.wit'), text.replaceAll('@0.2.12', `@${HTTP_WASI_VERSION}`));
  }
  await writeFile(
    join(wit, 'world.wit'),
    `package lambda:http-function;\n\nworld http-function {\n  include wasi:http/proxy@${HTTP_WASI_VERSION};\n}\n`,
  );
  return wit;
}

async function buildHttp(src, witPath) {
  const { component } = await componentize({
    sourcePath: join(src, 'index.js'),
    witPath,
    worldName: 'http-function',
    // Every default feature: stdio, random, clocks, `fetch` (http) and the
    // incoming handler (fetch-event).
    disableFeatures: [],
    env: Object.fromEntries(
      ['HOME', 'XDG_CACHE_HOME'].filter((k) => process.env[k]).map((k) => [k, process.env[k]]),
    ),
  });
  return component;
}

async function build(src, worldName) {
  const { component } = await componentize({
    sourcePath: join(src, 'index.js'),
    witPath: join(workdir, 'wit'),
    worldName,
    // The world grants no HTTP: componentize-js would import wasi:http otherwise.
    disableFeatures: ['http', 'fetch-event'],
    // wizer keeps compiled code in a cache under HOME (XDG_CACHE_HOME): it
    // gets the host's choice of both, and no other variable of ours.
    env: Object.fromEntries(
      ['HOME', 'XDG_CACHE_HOME'].filter((k) => process.env[k]).map((k) => [k, process.env[k]]),
    ),
  });
  return component;
}
