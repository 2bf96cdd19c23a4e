// Builds the web page into feed/webassets/: one JS and one CSS bundle with content
// hashes in their names (served with long cache lifetimes), index.html pointing at
// them, gzip and Brotli variants, and manifest.json listing every file.
// Run by scripts/build-web after `npm ci`.
import { createHash } from 'node:crypto';
import {
  copyFileSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, statSync, writeFileSync,
} from 'node:fs';
import { basename, dirname, extname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { brotliCompressSync, constants, gzipSync } from 'node:zlib';
import * as esbuild from 'esbuild';

const web = dirname(fileURLToPath(import.meta.url));
const root = dirname(web);
const out = join(root, 'feed', 'webassets');
const staging = `${out}.tmp-${process.pid}`;

function hashed(name, data) {
  const digest = createHash('sha256').update(data).digest('hex').slice(0, 12);
  const ext = extname(name);
  return `${basename(name, ext)}-${digest}${ext}`;
}

rmSync(staging, { recursive: true, force: true });
mkdirSync(staging, { recursive: true });
// The build is rebuilt by make demo / make test, never committed.
writeFileSync(join(staging, '.gitignore'), '*\n');

let result;
try {
  result = await esbuild.build({
    entryPoints: [join(web, 'app.js')],
    bundle: true,
    minify: true,
    sourcemap: 'linked',
    format: 'iife',
    target: ['es2020'],
    outdir: staging,
    entryNames: '[name]-[hash]',
    assetNames: '[name]-[hash]',
    loader: { '.png': 'file', '.svg': 'file', '.json': 'json' },
    legalComments: 'linked',
    metafile: true,
    logLevel: 'warning',
  });
} catch (err) {
  rmSync(staging, { recursive: true, force: true });
  console.error('web page build failed (see the errors above)');
  process.exit(1);
}

const outputs = Object.keys(result.metafile.outputs).map((p) => relative(staging, join(root, p)));
const entry = (ext) => outputs.find((p) => p.startsWith('app-') && p.endsWith(ext));
const names = { 'app.js': entry('.js'), 'app.css': entry('.css') };

const favicon = readFileSync(join(web, 'favicon.svg'));
names['favicon.svg'] = hashed('favicon.svg', favicon);
writeFileSync(join(staging, names['favicon.svg']), favicon);

let html = readFileSync(join(web, 'index.html'), 'utf8');
html = html.replace(/\{\{([\w.]+)\}\}/g, (m, key) => {
  if (!names[key]) throw new Error(`web/index.html names an unknown asset ${key}`);
  return names[key];
});
writeFileSync(join(staging, 'index.html'), html);

const files = readdirSync(staging).filter((f) => statSync(join(staging, f)).isFile()).sort();
for (const f of files) {
  if (!/\.(js|css|svg|txt)$/.test(f)) continue; // index.html is filled in per request; maps are rarely fetched
  const data = readFileSync(join(staging, f));
  writeFileSync(join(staging, `${f}.gz`), gzipSync(data, { level: 9 }));
  writeFileSync(join(staging, `${f}.br`), brotliCompressSync(data, {
    params: { [constants.BROTLI_PARAM_QUALITY]: 11, [constants.BROTLI_PARAM_SIZE_HINT]: data.length },
  }));
}
const manifest = {
  entries: names,
  files: files.filter((f) => f !== 'index.html'),
  immutable: files.filter((f) => /-[A-Za-z0-9]{8,}\.[a-z]+(\.map)?$/.test(f) || /-[A-Za-z0-9]{8,}\.[a-z]+\.LEGAL\.txt$/.test(f)),
};
writeFileSync(join(staging, 'manifest.json'), `${JSON.stringify(manifest, null, 2)}\n`);

// Swap in the new build in one rename, so a running server never sees half of it.
const previous = `${out}.old-${process.pid}`;
let hadPrevious = true;
try { renameSync(out, previous); } catch (err) { hadPrevious = false; }
renameSync(staging, out);
if (hadPrevious) rmSync(previous, { recursive: true, force: true });

const size = (f) => statSync(join(out, f)).size;
const kib = (n) => `${(n / 1024).toFixed(1)} KiB`;
console.log(`web page built into ${relative(root, out)}/: `
  + `${names['app.js']} ${kib(size(names['app.js']))} (gzip ${kib(size(`${names['app.js']}.gz`))}), `
  + `${names['app.css']} ${kib(size(names['app.css']))}`);
