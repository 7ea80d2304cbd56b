// The BackLess page in a real browser (Debian's Chromium) against the real service (`backless-dev`:
// emulator + worker running U²-NetP + web), as a user meets it.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, afterEach, before, describe, test } from 'node:test';

import { launch, watchProblems } from '../lib/browser.js';
import { REPO, startProxy, startStack, waitFor } from '../lib/stack.js';

const ASTRONAUT = path.join(REPO, 'worker/tests/fixtures/photos/astronaut.png');
const GRACE_S = 3;
const SHOTS = process.env.SCREENSHOT_DIR ||
  path.join(process.env.CARGO_TARGET_DIR || path.join(REPO, 'target'), 'browser-screenshots');
fs.mkdirSync(SHOTS, { recursive: true });

let stack;
let browser;

before(async () => {
  stack = await startStack({ BACKLESS_GRACE: `${GRACE_S}s` });
  browser = await launch();
});

// A test that failed while holding the queue must not hold up the next one.
afterEach(async () => {
  if (stack) await stack.resumeQueue();
});

after(async () => {
  if (browser) await browser.close();
  if (stack) await stack.stop();
});

async function openPage(base = stack.url) {
  const page = await browser.context.newPage();
  const problems = watchProblems(page);
  await page.goto(base + '/');
  await page.waitForSelector('body[data-ready="true"]');
  return { page, problems };
}

async function shot(page, name, options = {}) {
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true, ...options });
}

/** Width, height, colour type and bit depth from a PNG's IHDR. */
function pngHeader(buf) {
  assert.deepEqual([...buf.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], 'PNG signature');
  assert.equal(buf.subarray(12, 16).toString('latin1'), 'IHDR');
  return { width: buf.readUInt32BE(16), height: buf.readUInt32BE(20), bitDepth: buf[24], colorType: buf[25] };
}

/** Alpha of an <img> as the page decodes it: [transparent (< 8), mostly opaque (>= 128), total]. */
function alphaCounts(page, selector) {
  return page.$eval(selector, (img) => {
    const c = document.createElement('canvas');
    c.width = img.naturalWidth;
    c.height = img.naturalHeight;
    const ctx = c.getContext('2d');
    ctx.drawImage(img, 0, 0);
    const d = ctx.getImageData(0, 0, c.width, c.height).data;
    let clear = 0; let opaque = 0;
    for (let i = 3; i < d.length; i += 4) {
      if (d[i] < 8) clear++;
      else if (d[i] >= 128) opaque++;
    }
    return [clear, opaque, d.length / 4];
  });
}

/** The job as its owner sees it through the API (the page's cookie), or the HTTP status. */
async function apiJob(id) {
  const res = await browser.context.request.get(`${stack.url}/v1/jobs/${id}`);
  return res.ok() ? res.json() : res.status();
}

describe('the BackLess page', () => {
  test('a photo goes through every stage live, and its cut-out is shown and downloaded as a PNG with alpha', async () => {
    const { page, problems } = await openPage();
    await shot(page, 'upload');
    // The limits shown are the server's (GET /v1/config).
    const cfg = await (await fetch(`${stack.url}/v1/config`)).json();
    assert.match(await page.textContent('#limits'), new RegExp(`up to 25 MB and ${cfg.max_pixels / 1e6} megapixels`));
    assert.match(await page.textContent('#grace-text'), new RegExp(`${GRACE_S} seconds`));
    assert.match(await page.textContent('#limits'), new RegExp(`${cfg.batch_size} at a time`));
    // The model list is the server's, in its order, with its words.
    const offered = await page.locator('#opt-model option').evaluateAll((os) => os.map((o) => o.value));
    assert.deepEqual(offered, cfg.models.map((m) => m.id));
    assert.equal(await page.inputValue('#opt-model'), 'u2netp', 'the first model loaded is chosen');
    assert.match(await page.textContent('#opt-model option[value="isnet"]'), /^IS-Net/);
    assert.equal(await page.locator('#opt-model option[value="u2net"]').isDisabled(), true, 'models not loaded are offered disabled');

    // Hold the queue so the waiting view can be seen as it is.
    await stack.pauseQueue();
    await page.getByLabel(/Choose photos/).setInputFiles(ASTRONAUT);
    const card = page.locator('.job').first();
    await card.locator('[data-stage="queued"].active').waitFor();
    assert.equal(await card.getAttribute('data-view'), 'waiting');
    assert.equal(await card.locator('[data-stage="uploaded"]').getAttribute('class'), 'done');
    assert.match(await card.locator('[data-stage="uploaded"] .stage-time').textContent(), /^0\.\d s$/);
    assert.equal(await card.locator('.job-name').textContent(), 'astronaut');
    const t1 = Number(await card.locator('.elapsed-value').textContent());
    await page.waitForTimeout(400);
    const t2 = Number(await card.locator('.elapsed-value').textContent());
    assert.ok(t2 > t1, `elapsed time runs while waiting (${t1} -> ${t2})`);
    assert.equal(await card.locator('[data-stage="received"]').getAttribute('class') || '', '', 'nothing after queued yet');
    await shot(page, 'waiting');

    await stack.resumeQueue();
    await card.locator('.job-result').waitFor({ state: 'visible', timeout: 60000 });
    // Each stage after the upload arrived over the event stream, with its time.
    for (const stage of ['queued', 'received', 'segmenting', 'compositing', 'done']) {
      const li = card.locator(`[data-stage="${stage}"]`);
      assert.equal(await li.getAttribute('data-seen'), 'true', `${stage} was reported live`);
      assert.match(await li.locator('.stage-time').textContent(), /^\d+\.\d s$/, `${stage} shows its time`);
    }
    const jobId = await card.getAttribute('data-job-id');
    assert.match(jobId, /^[0-9a-f]{32}$/);

    // The result: decoded, full resolution, transparent background, over a checkerboard.
    await page.waitForFunction(() => document.querySelector('.after').complete && document.querySelector('.after').naturalWidth > 0);
    assert.equal(await page.$eval('.after', (img) => img.naturalWidth), 256);
    const [clear, opaque, total] = await alphaCounts(page, '.after');
    assert.ok(clear > total * 0.05 && opaque > total * 0.05, `background removed, subject kept (clear ${clear}, opaque ${opaque} of ${total})`);
    assert.match(await page.$eval('.compare', (el) => getComputedStyle(el).backgroundImage), /linear-gradient/, 'checkerboard behind the result');

    // The before/after slider works from the keyboard.
    const slider = page.getByRole('slider', { name: /Compare astronaut before and after/ });
    await slider.focus();
    const clip = () => page.$eval('.before', (img) => getComputedStyle(img).clipPath);
    const before = await clip();
    for (let i = 0; i < 10; i++) await page.keyboard.press('ArrowRight');
    assert.equal(await slider.inputValue(), '60');
    assert.notEqual(await clip(), before, 'the original is revealed further');
    assert.match(await page.textContent('#deletion-note'), /deleted from our servers\s+3 seconds after you close this page/);
    await shot(page, 'result');

    // Download: the file name the service suggests, a PNG with an alpha channel (colour type 6).
    const link = page.getByRole('link', { name: 'Download astronaut-nobg.png' });
    const [download] = await Promise.all([page.waitForEvent('download'), link.click()]);
    assert.equal(download.suggestedFilename(), 'astronaut-nobg.png');
    const png = fs.readFileSync(await download.path());
    const ihdr = pngHeader(png);
    assert.deepEqual([ihdr.width, ihdr.height, ihdr.colorType], [256, 256, 6]);

    // On a phone-sized screen nothing sticks out sideways.
    await page.setViewportSize({ width: 390, height: 844 });
    assert.ok(await page.evaluate(() => document.documentElement.scrollWidth <= 390), 'no horizontal scrolling at 390 px');
    await shot(page, 'result-phone');

    // While the page is open the photo stays, well past the grace window.
    await page.waitForTimeout((GRACE_S + 1.5) * 1000);
    assert.equal((await apiJob(jobId)).state, 'done');
    assert.equal(stack.storedFiles(jobId).length, 2, 'original and result kept while the page is open');

    // Closing the page deletes original, result and record after the grace window.
    assert.deepEqual(problems, []);
    const closedAt = Date.now();
    await page.close();
    await waitFor('the job to be deleted', async () => stack.storedFiles(jobId).length === 0 && (await apiJob(jobId)) === 404, 20000, 250);
    const took = (Date.now() - closedAt) / 1000;
    assert.ok(took >= GRACE_S - 0.5, `deleted after the grace window, not before (${took} s)`);
  });

  test('the options reach the worker: JPEG on a chosen colour, cropped to the subject', async () => {
    const { page, problems } = await openPage();
    await page.getByLabel('Output format').selectOption('jpeg');
    // JPEG has no transparency: the page switches to a solid colour and says so.
    assert.equal(await page.getByLabel('Transparent').isDisabled(), true);
    assert.equal(await page.getByLabel('Solid colour').isChecked(), true);
    await page.getByLabel('Colour', { exact: true }).fill('#00ff00');
    await page.getByLabel('Crop to the subject').check();
    await page.getByLabel(/Choose photos/).setInputFiles(ASTRONAUT);
    const card = page.locator('.job').first();
    await card.locator('.job-result').waitFor({ state: 'visible', timeout: 60000 });
    const job = await apiJob(await card.getAttribute('data-job-id'));
    assert.deepEqual(job.options, { model: 'u2netp', format: 'jpeg', mask_only: false, bg_color: '#00ff00', crop: true });
    // Cropped: shown side by side with the original; the corners of the result are the colour.
    assert.equal(await card.locator('.compare').getAttribute('class'), 'compare side');
    const [w, h, corner] = await page.$eval('.after', (img) => {
      const c = document.createElement('canvas');
      c.width = img.naturalWidth; c.height = img.naturalHeight;
      const ctx = c.getContext('2d');
      ctx.drawImage(img, 0, 0);
      return [c.width, c.height, Array.from(ctx.getImageData(0, 0, 1, 1).data)];
    });
    assert.ok(w < 256 || h < 256, `cropped (${w}x${h})`);
    assert.ok(corner[0] < 60 && corner[1] > 200 && corner[2] < 60, `green background (${corner})`);
    const [download] = await Promise.all([page.waitForEvent('download'), card.locator('.download').click()]);
    assert.equal(download.suggestedFilename(), 'astronaut-nobg.jpg');
    const bytes = fs.readFileSync(await download.path());
    assert.deepEqual([...bytes.subarray(0, 3)], [0xff, 0xd8, 0xff], 'a JPEG');
    await shot(page, 'result-cropped');
    assert.deepEqual(problems, []);
    await page.close();
  });

  test('"WebP, lossy" sends a quality: the cut-out is a lossy WebP that keeps its transparency', async () => {
    const { page, problems } = await openPage();
    await page.getByLabel('Output format').selectOption('webp-lossy');
    assert.equal(await page.getByLabel('Transparent').isChecked(), true);
    await page.getByLabel(/Choose photos/).setInputFiles(ASTRONAUT);
    const card = page.locator('.job').first();
    await card.locator('.job-result').waitFor({ state: 'visible', timeout: 60000 });
    const job = await apiJob(await card.getAttribute('data-job-id'));
    assert.deepEqual(job.pipeline, ['remove_background:model=u2netp', 'encode:format=webp,quality=80']);
    const [clear, opaque, total] = await alphaCounts(page, '.after');
    assert.ok(clear > total / 10 && opaque > total / 10, `cut out (${clear} clear, ${opaque} opaque of ${total})`);
    const [download] = await Promise.all([page.waitForEvent('download'), card.locator('.download').click()]);
    assert.equal(download.suggestedFilename(), 'astronaut-nobg.webp');
    const bytes = fs.readFileSync(await download.path());
    assert.equal(bytes.subarray(0, 4).toString('latin1'), 'RIFF');
    assert.equal(bytes.subarray(8, 16).toString('latin1'), 'WEBPVP8X', 'lossy WebP with an alpha chunk');
    assert.deepEqual(problems, []);
    await page.close();
  });

  test('edit-only options become a pipeline: each operation shows its stage, the result has its size', async () => {
    const { page, problems } = await openPage();
    await page.getByLabel('Task').selectOption('edit');
    // Without background removal the model and cut-out options do not apply.
    assert.equal(await page.getByLabel('Model').isDisabled(), true);
    assert.equal(await page.getByLabel('Crop to the subject').isDisabled(), true);
    await page.getByLabel('Filter').selectOption('grayscale');
    await page.getByLabel('Resize to width').fill('128');
    await page.getByLabel('Watermark text').fill('BackLess');
    await page.getByLabel(/Choose photos/).setInputFiles(ASTRONAUT);
    const card = page.locator('.job').first();
    await card.locator('.job-result').waitFor({ state: 'visible', timeout: 60000 });
    const job = await apiJob(await card.getAttribute('data-job-id'));
    assert.deepEqual(job.pipeline, [
      'filter:grayscale',
      'resize:width=128,fit=contain',
      'watermark:position=bottom_right,opacity=0.6,text=BackLess',
      'encode:format=png',
    ]);
    // The progress list is the pipeline's, in order, and no model stage appears.
    const stages = await card.locator('.stages li').evaluateAll((lis) => lis.map((li) => li.dataset.stage));
    assert.deepEqual(stages, ['uploaded', 'queued', 'received', 'filtering', 'resizing', 'watermarking', 'encoding', 'stored', 'done']);
    assert.equal(await card.locator('[data-stage="done"]').getAttribute('class'), 'done');
    const [w, h, grey] = await page.$eval('.after', (img) => {
      const c = document.createElement('canvas');
      c.width = img.naturalWidth; c.height = img.naturalHeight;
      const ctx = c.getContext('2d');
      ctx.drawImage(img, 0, 0);
      const d = ctx.getImageData(0, 0, c.width, c.height / 2).data;
      let grey = true;
      for (let i = 0; i < d.length; i += 4) if (d[i] !== d[i + 1] || d[i + 1] !== d[i + 2]) grey = false;
      return [c.width, c.height, grey];
    });
    assert.deepEqual([w, h], [128, 128]);
    assert.ok(grey, 'black and white (the top half, away from the watermark)');
    const [download] = await Promise.all([page.waitForEvent('download'), card.locator('.download').click()]);
    assert.equal(download.suggestedFilename(), 'astronaut-edited.png');
    assert.deepEqual(problems, []);
    await page.close();
  });

  test('a file that is not an image is refused on the page with a clear message', async () => {
    const { page, problems } = await openPage();
    await page.getByLabel(/Choose photos/).setInputFiles({
      name: 'notes.png', mimeType: 'image/png', buffer: Buffer.from('these are my notes, not a photo\n'),
    });
    const error = page.locator('#upload-error');
    await error.waitFor({ state: 'visible' });
    assert.match(await error.textContent(), /notes\.png is not an image BackLess can read\. Use PNG, JPEG, WebP, GIF, BMP or TIFF\./);
    assert.equal(await error.getAttribute('role'), 'alert');
    assert.equal(await page.isVisible('#jobs-view'), false, 'no job started');
    await shot(page, 'invalid');

    // A header announcing 9000x9000 pixels is refused before uploading, with the server's limit.
    const ihdr = Buffer.alloc(13);
    ihdr.writeUInt32BE(9000, 0);
    ihdr.writeUInt32BE(9000, 4);
    ihdr[8] = 8; ihdr[9] = 6;
    const header = Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13]), Buffer.from('IHDR'), ihdr, Buffer.alloc(4)]);
    await page.getByLabel(/Choose photos/).setInputFiles({ name: 'huge.png', mimeType: 'image/png', buffer: header });
    await page.waitForFunction(() => /huge\.png/.test(document.querySelector('#upload-error').textContent));
    assert.match(await error.textContent(), /huge\.png is 9000×9000 \(81 megapixels\), larger than 40 megapixels/);
    assert.deepEqual(problems, []);
    await page.close();
  });

  test('photos can be dropped or pasted as well as picked, and the picker is reachable by keyboard', async () => {
    const { page, problems } = await openPage();
    await page.keyboard.press('Tab');
    assert.equal(await page.evaluate(() => document.activeElement.textContent), 'Skip to content');
    await page.keyboard.press('Tab');
    assert.equal(await page.evaluate(() => document.activeElement.id), 'file', 'the file picker comes next');

    const files = (list) => page.evaluateHandle((list) => {
      const dt = new DataTransfer();
      for (const [name, b64] of list) dt.items.add(new File([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], name));
      return dt;
    }, list);
    // Dropping a non-image on the drop zone: checked like a picked file.
    const dropped = await files([['dropped.txt', Buffer.from('not a photo').toString('base64')]]);
    await page.dispatchEvent('#drop', 'dragenter', { dataTransfer: dropped });
    assert.match(await page.getAttribute('#drop', 'class'), /\bover\b/, 'the drop zone lights up');
    await page.dispatchEvent('#drop', 'drop', { dataTransfer: dropped });
    await page.waitForFunction(() => /dropped\.txt is not an image/.test(document.querySelector('#upload-error').textContent));
    assert.doesNotMatch(await page.getAttribute('#drop', 'class'), /\bover\b/);

    // Pasting a bitmap (browsers call it image.png) starts a job named for what it is.
    const pasted = await files([['image.png', fs.readFileSync(ASTRONAUT).toString('base64')]]);
    await page.evaluate((dt) => document.dispatchEvent(new ClipboardEvent('paste', { clipboardData: dt, bubbles: true })), pasted);
    const card = page.locator('.job').first();
    await card.locator('.job-result').waitFor({ state: 'visible', timeout: 60000 });
    assert.equal(await card.locator('.job-name').textContent(), 'pasted-image');
    assert.equal(await card.locator('.download').getAttribute('download'), 'pasted-image-nobg.png');
    assert.deepEqual(problems, []);
    await page.close();
  });

  test('a photo the worker cannot decode ends with the reason and a retry button', async () => {
    const { page, problems } = await openPage();
    // A valid header (web accepts it: 256x256) but the pixel data stops half-way: only the worker,
    // which decodes the whole image, finds out.
    const truncated = fs.readFileSync(ASTRONAUT).subarray(0, 40000);
    // Hold the queue until the page follows the job, so it sees the worker take it.
    await stack.pauseQueue();
    await page.getByLabel(/Choose photos/).setInputFiles({ name: 'broken.png', mimeType: 'image/png', buffer: truncated });
    const card = page.locator('.job').first();
    await card.locator('[data-stage="queued"].active').waitFor();
    await stack.resumeQueue();
    await card.locator('.job-failed').waitFor({ state: 'visible', timeout: 60000 });
    const failure = card.locator('.failure');
    assert.equal(await failure.textContent(),
      'The image is damaged or truncated and cannot be decoded. Export the photo again, or choose another one.');
    assert.equal(await card.getAttribute('data-error-code'), 'corrupt_image');
    assert.equal(await failure.getAttribute('role'), 'alert');
    const firstId = await card.getAttribute('data-job-id');
    assert.equal(await card.locator('[data-stage="received"]').getAttribute('data-seen'), 'true', 'it reached the worker');
    await shot(page, 'failed');

    // Try again: a new job with the same file (and the failed one deleted), which fails the same way.
    await page.getByRole('button', { name: 'Try again' }).click();
    const again = page.locator('.job').first();
    await waitFor('a new job', async () => {
      const id = await again.getAttribute('data-job-id');
      return id && id !== firstId;
    });
    await again.locator('.job-failed').waitFor({ state: 'visible', timeout: 60000 });
    assert.equal(await again.getAttribute('data-error-code'), 'corrupt_image');
    await waitFor('the failed job to be deleted', async () => (await apiJob(firstId)) === 404);

    // Process another photo: back to the upload view.
    await page.getByRole('button', { name: 'Process another photo' }).click();
    assert.equal(await page.isVisible('#upload-view'), true);
    assert.deepEqual(problems, []);
    await page.close();
  });

  test('cancelling a waiting photo deletes it at once', async () => {
    const { page, problems } = await openPage();
    await stack.pauseQueue();
    await page.getByLabel(/Choose photos/).setInputFiles(ASTRONAUT);
    const card = page.locator('.job').first();
    await card.locator('[data-stage="queued"].active').waitFor();
    const id = await card.getAttribute('data-job-id');
    assert.equal(stack.storedFiles(id).length, 1, 'the original is stored');
    await page.getByRole('button', { name: 'Cancel and delete' }).click();
    await page.locator('#upload-view').waitFor({ state: 'visible' });
    assert.equal(await apiJob(id), 404);
    assert.deepEqual(stack.storedFiles(id), []);
    assert.deepEqual(problems, []);
    await page.close();
  });

  test('an upload the server refuses shows its message on the card', async () => {
    const { page, problems } = await openPage();
    // PNG signature and a cut IHDR: nothing for the page to measure, so the server decides.
    const cut = fs.readFileSync(ASTRONAUT).subarray(0, 20);
    await page.getByLabel(/Choose photos/).setInputFiles({ name: 'cut.png', mimeType: 'image/png', buffer: cut });
    const card = page.locator('.job').first();
    await card.locator('.job-failed').waitFor({ state: 'visible' });
    assert.equal(await card.getAttribute('data-error-code'), 'corrupt_image');
    assert.match(await card.locator('.failure').textContent(), /damaged|cannot be read|corrupt/i);
    assert.deepEqual(problems, []);
    await page.close();
  });

  test('several photos at once each become a job and finish', async () => {
    const { page, problems } = await openPage();
    const chelsea = path.join(REPO, 'worker/tests/fixtures/photos/chelsea.png');
    await page.getByLabel(/Choose photos/).setInputFiles([ASTRONAUT, chelsea]);
    const cards = page.locator('.job');
    await waitFor('two cards', async () => (await cards.count()) === 2);
    assert.equal(await page.textContent('#jobs-title'), 'Your 2 photos');
    for (let i = 0; i < 2; i++) await cards.nth(i).locator('.job-result').waitFor({ state: 'visible', timeout: 60000 });
    const names = await cards.locator('.download').evaluateAll((as) => as.map((a) => a.download));
    assert.deepEqual(names, ['astronaut-nobg.png', 'chelsea-nobg.png']);
    const ids = await cards.evaluateAll((els) => els.map((e) => e.dataset.jobId));
    assert.notEqual(ids[0], ids[1]);
    // "Process another photo" lets both go: deleted after the grace window.
    await page.getByRole('button', { name: 'Process another photo' }).click();
    assert.equal(await page.isVisible('#upload-view'), true);
    await waitFor('both jobs to be deleted', async () => ids.every((id) => stack.storedFiles(id).length === 0), 20000, 250);
    assert.deepEqual(problems, []);
    await page.close();
  });

  test('a stream that reaches its maximum lifetime reconnects without the user noticing', async () => {
    // Streams end after 1 s; the browser reconnects (about 3 s later) with Last-Event-ID.
    const own = await startStack({ BACKLESS_SSE_MAX_LIFETIME: '1s' });
    try {
      const { page, problems } = await openPage(own.url);
      await own.pauseQueue();
      await page.getByLabel(/Choose photos/).setInputFiles(ASTRONAUT);
      const card = page.locator('.job').first();
      await card.locator('[data-stage="queued"].active').waitFor();
      // Two lifetimes and their reconnects pass while the job waits: no "connection lost".
      const until = Date.now() + 9000;
      while (Date.now() < until) {
        assert.equal(await card.locator('.connection').isVisible(), false);
        await page.waitForTimeout(250);
      }
      await own.resumeQueue();
      await card.locator('.job-result').waitFor({ state: 'visible', timeout: 60000 });
      assert.equal(await card.locator('.connection').isVisible(), false);
      assert.deepEqual(problems, []);
      await page.close();
    } finally {
      await own.stop();
    }
  });

  test('after a network drop the page reconnects and still shows the result', async () => {
    // Its own service, with the default grace window: the job finishes while the page is cut off,
    // and the page has that long to come back (the suite's 3 s is shorter than a reconnect).
    const own = await startStack({ BACKLESS_GRACE: '30s' });
    const proxy = await startProxy(own.url);
    const apiJob = async (id) => {
      const res = await browser.context.request.get(`${own.url}/v1/jobs/${id}`);
      return res.ok() ? res.json() : res.status();
    };
    try {
      const { page, problems } = await openPage(proxy.url);
      await own.pauseQueue();
      await page.getByLabel(/Choose photos/).setInputFiles(ASTRONAUT);
      const card = page.locator('.job').first();
      await card.locator('[data-stage="queued"].active').waitFor();
      // The network goes away; meanwhile the job runs to the end.
      proxy.drop();
      await card.locator('.connection').waitFor({ state: 'visible' });
      assert.match(await card.locator('.connection').textContent(), /Connection lost, reconnecting/);
      await own.resumeQueue();
      const id = await card.getAttribute('data-job-id');
      await waitFor('the job to finish', async () => (await apiJob(id)).state === 'done', 60000, 200);
      assert.equal(await card.getAttribute('data-view'), 'waiting', 'the page cannot know yet');
      proxy.restore();
      await card.locator('.job-result').waitFor({ state: 'visible', timeout: 30000 });
      assert.equal(await card.locator('.connection').isVisible(), false);
      assert.equal(await page.$eval('.after', (img) => img.naturalWidth), 256);
      assert.deepEqual(problems, []);
      await page.close();
    } finally {
      await proxy.close();
      await own.stop();
    }
  });

  test('a job finishing while the tab is hidden raises a notification', async () => {
    const page = await browser.context.newPage();
    const problems = watchProblems(page);
    // Record notifications and let the test decide whether the tab is visible.
    await page.addInitScript(() => {
      window.__notes = [];
      window.__hidden = false;
      class FakeNotification {
        static permission = 'default';
        static async requestPermission() { FakeNotification.permission = 'granted'; return 'granted'; }
        constructor(title, opts) { window.__notes.push({ title, body: opts && opts.body }); }
        close() {}
      }
      window.Notification = FakeNotification;
      Object.defineProperty(Document.prototype, 'visibilityState', { get: () => (window.__hidden ? 'hidden' : 'visible') });
      Object.defineProperty(Document.prototype, 'hidden', { get: () => window.__hidden });
    });
    await page.goto(stack.url + '/');
    await page.waitForSelector('body[data-ready="true"]');
    await stack.pauseQueue();
    await page.getByLabel(/Choose photos/).setInputFiles(ASTRONAUT);
    await page.getByRole('button', { name: 'Notify me when it is ready' }).click();
    await page.locator('#notify-offer').waitFor({ state: 'hidden' });
    await page.evaluate(() => { window.__hidden = true; document.dispatchEvent(new Event('visibilitychange')); });
    await stack.resumeQueue();
    await page.locator('.job-result').waitFor({ state: 'visible', timeout: 60000 });
    const notes = await page.evaluate(() => window.__notes);
    assert.deepEqual(notes, [{ title: 'Background removed', body: 'astronaut is ready to download.' }]);
    assert.deepEqual(problems, []);
    await page.close();
  });
});
