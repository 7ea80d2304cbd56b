// The page's own upload checks (web/static/checks.js), run in node: type sniffing and header
// dimensions for each accepted format, and the messages a person sees.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';

import { DEFAULT_LIMITS, checkFile, dimensions, formatBytes, sniff } from '../../static/checks.js';
import { REPO } from '../lib/stack.js';

const u8 = (...parts) => new Uint8Array(Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p, 'latin1') : Buffer.from(p)))));
const le16 = (n) => { const b = Buffer.alloc(2); b.writeUInt16LE(n); return b; };
const be16 = (n) => { const b = Buffer.alloc(2); b.writeUInt16BE(n); return b; };
const le32 = (n) => { const b = Buffer.alloc(4); b.writeInt32LE(n); return b; };
const le24 = (n) => Buffer.from([n & 0xff, (n >> 8) & 0xff, (n >> 16) & 0xff]);

const headers = {
  png: new Uint8Array(fs.readFileSync(path.join(REPO, 'worker/tests/fixtures/photos/chelsea.png'))),
  gif: u8('GIF89a', le16(640), le16(480), [0, 0, 0]),
  bmp: u8('BM', Buffer.alloc(16), le32(640), le32(-480), Buffer.alloc(8)),
  // SOI, an APP0 segment, then a baseline frame header: precision, height, width.
  jpeg: u8([0xff, 0xd8, 0xff, 0xe0], be16(16), 'JFIF\0', Buffer.alloc(9), [0xff, 0xc0], be16(17), [8], be16(480), be16(640), [3], Buffer.alloc(9)),
  webp: u8('RIFF', le32(100), 'WEBP', 'VP8X', le32(10), [0, 0, 0, 0], le24(639), le24(479)),
  tiff: u8([0x49, 0x49, 0x2a, 0x00], Buffer.alloc(12)),
};

test('every accepted format is recognised from its bytes, and its size read from the header', () => {
  for (const [type, bytes] of Object.entries(headers)) assert.equal(sniff(bytes), type);
  assert.deepEqual(dimensions('png', headers.png), [301, 200]);
  for (const type of ['gif', 'bmp', 'jpeg', 'webp']) assert.deepEqual(dimensions(type, headers[type]), [640, 480], type);
  assert.equal(dimensions('tiff', headers.tiff), null, 'TIFF is left to the server');
  assert.equal(sniff(u8('<svg xmlns="http://www.w3.org/2000/svg"/>')), null);
  assert.equal(sniff(u8('%PDF-1.7')), null);
  assert.equal(dimensions('png', headers.png.subarray(0, 20)), null, 'a cut header is left to the server');
});

test('files are refused with messages a person can act on', async () => {
  const file = (name, bytes) => new File([bytes], name);
  assert.equal(await checkFile(file('cat.png', headers.png), DEFAULT_LIMITS), null);
  assert.equal(await checkFile(file('empty.png', new Uint8Array()), DEFAULT_LIMITS), 'empty.png is empty.');
  assert.match(await checkFile(file('notes.jpg', u8('hello')), DEFAULT_LIMITS), /^notes\.jpg is not an image BackLess can read\./);
  const small = { ...DEFAULT_LIMITS, max_upload_bytes: 1024 * 1024, max_pixels: 200000 };
  assert.match(await checkFile(file('big.png', new Uint8Array(1536 * 1024)), small), /^big\.png is 1\.5 MB; the limit is 1 MB\./);
  assert.match(await checkFile(file('wide.gif', headers.gif), small), /^wide\.gif is 640×480 \(0\.3 megapixels\), larger than 0\.2 megapixels/);
  assert.match(await checkFile(file('long.bmp', headers.bmp), { ...DEFAULT_LIMITS, max_side: 600 }), /each side may be at most 600 pixels/);
  assert.equal(formatBytes(25 * 1024 * 1024), '25 MB');
});
