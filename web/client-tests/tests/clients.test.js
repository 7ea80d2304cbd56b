// Real remove.bg clients against the real service (`backless-dev`: web, emulator and worker with
// U²-NetP): the npm `remove.bg` client in this process, two PyPI clients in a child Python, and a
// bounded load of synchronous requests. Each client is used unchanged; only its fixed
// https://api.remove.bg base is pointed at the stack.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { REPO, startStack, waitFor } from '../../browser-tests/lib/stack.js';
import { alphaBox, decodePng } from '../lib/png.js';

const require = createRequire(import.meta.url);
const ASTRONAUT = path.join(REPO, 'worker/tests/fixtures/photos/astronaut.png');
const CHELSEA = path.join(REPO, 'worker/tests/fixtures/photos/chelsea.png');
const KEY = 'ci-0123456789abcdef0123';

// The npm client posts through unirest to a hard-coded https://api.remove.bg: rewrite that base
// on the very unirest module the client loads.
let base = '';
const unirest = require(require.resolve('unirest', { paths: [require.resolve('remove.bg')] }));
const post = unirest.post;
unirest.post = (url, ...rest) => post(String(url).replace('https://api.remove.bg', base), ...rest);
const rbg = require('remove.bg');

let stack;
let photos; // a local image server: the `image_url` source
let photosUrl;

before(async () => {
  photos = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'image/png' });
    fs.createReadStream(CHELSEA).pipe(res);
  });
  await new Promise((r) => photos.listen(0, '127.0.0.1', r));
  // `localhost` resolves to loopback, which image_url refuses unless the host is allowed.
  photosUrl = `http://localhost:${photos.address().port}/chelsea.png`;
  stack = await startStack({
    BACKLESS_API_KEYS: `ci=${KEY}`,
    BACKLESS_IMAGE_URL_ALLOW_HOSTS: 'localhost',
    BACKLESS_REMOVEBG_TIMEOUT: '300s',
  });
  base = stack.url;
});

after(async () => {
  await stack?.stop();
  photos?.close();
});

/** Every job's files are deleted (just after each answer was sent). */
async function gone(s) {
  await waitFor('every original and result to be deleted', () => s.storedFiles('').length === 0, 5000);
}

/** Width, height and colour type of a PNG. */
function pngInfo(buf) {
  assert.equal(buf.subarray(0, 8).toString('latin1'), '\x89PNG\r\n\x1a\n');
  return { width: buf.readUInt32BE(16), height: buf.readUInt32BE(20), colour: buf[25] };
}

test('npm remove.bg: a file, base64 with channels=alpha, bg_color and a URL', async () => {
  const file = await rbg.removeBackgroundFromImageFile({ path: ASTRONAUT, apiKey: KEY, size: 'regular', type: 'person' });
  const png = Buffer.from(file.base64img, 'base64');
  const info = pngInfo(png);
  assert.equal(info.colour, 6, 'RGBA');
  assert.ok(info.width * info.height <= 250_000, `${info.width}x${info.height}`);
  assert.equal(Number(file.resultWidth), info.width);
  assert.equal(Number(file.resultHeight), info.height);
  assert.equal(String(file.creditsCharged), '1');
  assert.ok(Number(file.rateLimit) > 0 && Number(file.rateLimitRemaining) < Number(file.rateLimit), JSON.stringify(file));
  assert.ok(Number(file.rateLimitReset) * 1000 > Date.now() - 1000, 'reset is a Unix time');

  const b64 = fs.readFileSync(ASTRONAUT).toString('base64');
  const mask = await rbg.removeBackgroundFromImageBase64({ base64img: b64, apiKey: KEY, size: 'medium', channels: 'alpha' });
  assert.equal(pngInfo(Buffer.from(mask.base64img, 'base64')).colour, 0, 'a greyscale mask');

  const coloured = await rbg.removeBackgroundFromImageFile({ path: ASTRONAUT, apiKey: KEY, bg_color: '81d4fa', crop: true });
  assert.ok(Buffer.from(coloured.base64img, 'base64').subarray(0, 3).equals(Buffer.from([0xff, 0xd8, 0xff])), 'auto on a colour is JPEG');

  const fromUrl = await rbg.removeBackgroundFromImageUrl({ url: photosUrl, apiKey: KEY, size: 'preview' });
  assert.equal(pngInfo(Buffer.from(fromUrl.base64img, 'base64')).colour, 6);
  await gone(stack);
});

test('npm remove.bg: roi, crop_margin, scale and position shape the result', async () => {
  const cut = async (opts) => {
    const r = await rbg.removeBackgroundFromImageFile({ path: ASTRONAUT, apiKey: KEY, size: 'preview', ...opts });
    return decodePng(Buffer.from(r.base64img, 'base64'));
  };
  const whole = await cut({});
  const subject = alphaBox(whole);
  assert.ok(subject, 'the photo has a subject');

  // Nothing right of the region's edge can be subject.
  const left = await cut({ roi: '0% 0% 50% 100%' });
  const half = Math.ceil(left.width / 2);
  for (let y = 0; y < left.height; y++) {
    for (let x = half; x < left.width; x++) assert.equal(left.pixels[(y * left.width + x) * 4 + 3], 0, `alpha at ${x},${y}`);
  }
  assert.ok(alphaBox(left), 'the left half keeps its subject');

  // A margin in percent of the subject makes the crop larger (up to the photo).
  const tight = await cut({ crop: true });
  const loose = await cut({ crop: true, crop_margin: '20%' });
  assert.ok(loose.width * loose.height > tight.width * tight.height, `${tight.width}x${tight.height} -> ${loose.width}x${loose.height}`);

  // scale: the subject's box fits in half the image, centred; position alone moves it.
  const scaled = await cut({ scale: '50%' });
  assert.deepEqual([scaled.width, scaled.height], [whole.width, whole.height]);
  const box = alphaBox(scaled, 10);
  assert.ok(box.w <= Math.ceil(whole.width / 2) + 2 && box.h <= Math.ceil(whole.height / 2) + 2, JSON.stringify(box));
  assert.ok(Math.abs(box.x + box.w / 2 - whole.width / 2) <= 3 && Math.abs(box.y + box.h / 2 - whole.height / 2) <= 3, JSON.stringify(box));
  const corner = alphaBox(await cut({ position: '0% 0%' }), 10);
  assert.ok(corner.x <= 1 && corner.y <= 1, JSON.stringify(corner));
  await gone(stack);
});

test('background images: bg_image_url from the npm client, bg_image_file in a form', async () => {
  const onUrl = await rbg.removeBackgroundFromImageFile({ path: ASTRONAUT, apiKey: KEY, size: 'preview', bg_image_url: photosUrl });
  const jpeg = Buffer.from(onUrl.base64img, 'base64');
  assert.ok(jpeg.subarray(0, 3).equals(Buffer.from([0xff, 0xd8, 0xff])), 'auto on a background image is JPEG');

  const form = new FormData();
  form.append('image_file', new Blob([fs.readFileSync(ASTRONAUT)], { type: 'image/png' }), 'astronaut.png');
  form.append('bg_image_file', new Blob([fs.readFileSync(CHELSEA)], { type: 'image/png' }), 'chelsea.png');
  form.append('size', 'preview');
  form.append('format', 'png');
  const res = await fetch(`${stack.url}/v1.0/removebg`, { method: 'POST', headers: { 'X-Api-Key': KEY }, body: form });
  const body = Buffer.from(await res.arrayBuffer());
  assert.equal(res.status, 200, body.toString().slice(0, 300));
  const png = decodePng(body);
  // Opaque everywhere: the background image fills what was transparent.
  assert.equal(png.channels, 3, 'RGB: nothing is transparent');
  // A corner of the cut-out (background there) now has the cat photo's colours, not black.
  const corner = png.pixels.subarray(0, 3);
  assert.ok(corner[0] + corner[1] + corner[2] > 30, `corner ${[...corner]}`);

  // Both a colour and an image: refused before anything is stored.
  const both = new FormData();
  both.append('image_file', new Blob([fs.readFileSync(ASTRONAUT)], { type: 'image/png' }), 'astronaut.png');
  both.append('bg_image_url', photosUrl);
  both.append('bg_color', 'red');
  const refused = await fetch(`${stack.url}/v1.0/removebg`, { method: 'POST', headers: { 'X-Api-Key': KEY }, body: both });
  assert.equal(refused.status, 400);
  assert.equal((await refused.json()).errors[0].code, 'invalid_parameter');
  await gone(stack);
});

test('npm remove.bg: a wrong key and a refused URL are remove.bg errors', async () => {
  await assert.rejects(
    rbg.removeBackgroundFromImageFile({ path: ASTRONAUT, apiKey: 'wrong-0123456789abcdef' }),
    (errors) => errors[0].code === 'auth_failed' && typeof errors[0].title === 'string',
  );
  const loopback = `http://127.0.0.1:${photos.address().port}/chelsea.png`;
  await assert.rejects(
    rbg.removeBackgroundFromImageUrl({ url: loopback, apiKey: KEY }),
    (errors) => errors[0].code === 'image_url_forbidden',
  );
});

test('PyPI removebg and remove-bg-api', async () => {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'backless-pyclients-'));
  // Not spawnSync: this process serves the image_url photo meanwhile.
  const child = spawn('python3', [path.join(import.meta.dirname, '../py/clients.py'), stack.url, KEY, CHELSEA, photosUrl, out]);
  let output = '';
  child.stdout.on('data', (d) => { output += d; });
  child.stderr.on('data', (d) => { output += d; });
  const status = await new Promise((r) => child.on('close', r));
  fs.rmSync(out, { recursive: true, force: true });
  assert.equal(status, 0, output);
  await gone(stack);
});

test('a key over its daily quota gets 402 and no job', async () => {
  const small = await startStack({ BACKLESS_API_KEYS: `ci=${KEY}`, BACKLESS_API_KEY_QUOTA_PER_DAY: '1' });
  const saved = base;
  base = small.url;
  try {
    await rbg.removeBackgroundFromImageFile({ path: CHELSEA, apiKey: KEY });
    await assert.rejects(
      rbg.removeBackgroundFromImageFile({ path: CHELSEA, apiKey: KEY }),
      (errors) => errors[0].code === 'insufficient_credits',
    );
    const account = await (await fetch(`${small.url}/v1.0/account`, { headers: { 'X-Api-Key': KEY } })).json();
    assert.equal(account.data.attributes.credits.total, 0);
    await gone(small);
  } finally {
    base = saved;
    await small.stop();
  }
});

test('load: 20 synchronous requests at once all complete through the queue, and every job is deleted', async () => {
  const photo = new Blob([fs.readFileSync(CHELSEA)], { type: 'image/png' });
  const one = async () => {
    const form = new FormData();
    form.append('image_file', photo, 'chelsea.png');
    form.append('size', 'preview');
    const res = await fetch(`${stack.url}/v1.0/removebg`, { method: 'POST', headers: { 'X-Api-Key': KEY }, body: form });
    const body = Buffer.from(await res.arrayBuffer());
    return { status: res.status, width: Number(res.headers.get('x-width')), body };
  };
  const results = await Promise.all(Array.from({ length: 20 }, one));
  for (const r of results) {
    assert.equal(r.status, 200, r.body.toString().slice(0, 300));
    assert.equal(pngInfo(r.body).width, r.width);
  }
  await gone(stack);
  const metrics = await (await fetch(`${stack.url}/metrics`)).text();
  for (const state of ['queued', 'processing', 'done', 'failed']) {
    assert.match(metrics, new RegExp(`backless_jobs\\{state="${state}"\\} 0\\b`), `no ${state} job left`);
  }
});
