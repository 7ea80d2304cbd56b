// BackLess page: pick, drop or paste photos; each becomes a job whose stages arrive live over
// server-sent events; the result is shown over a checkerboard with a before/after slider.
//
// A job's files live on the server while this page holds its event stream open (`?hold=true`);
// closing the page (or starting over) closes the stream and the server deletes the job after its
// grace window (web/src/lifecycle.rs).
import { DEFAULT_LIMITS, checkFile, formatBytes, formatMegapixels } from './checks.js';

const $ = (id) => document.getElementById(id);
/**
 * What each stage is called on the page. Which stages a job reports, in which order and under
 * which event ids, the server says (`job.stages`); the page keeps only the words.
 */
const LABELS = {
  uploaded: 'Uploaded',
  queued: 'Queued',
  received: 'Picked up by a worker',
  segmenting: 'Finding the subject',
  compositing: 'Removing the background',
  cropping: 'Cropping to the subject',
  placing: 'Placing the subject',
  painting: 'Painting the background image',
  resizing: 'Resizing',
  thumbnailing: 'Making the thumbnail',
  watermarking: 'Adding the watermark',
  filtering: 'Applying the filter',
  encoding: 'Encoding',
  stored: 'Saving the result',
  done: 'Done',
};
/** Chrome allows six HTTP/1.1 connections per host; each job holds one for its event stream. */
const MAX_AT_ONCE = 4;

/** Hints added to failure messages, by error code. */
const HINTS = {
  corrupt_image: 'Export the photo again, or choose another one.',
  not_an_image: 'Choose a PNG, JPEG, WebP, GIF, BMP or TIFF file.',
  model_unavailable: 'Process another photo and pick another model under Options.',
  output_too_large: 'Ask for a smaller result (resize, thumbnail) and try again.',
  over_memory_budget: 'Ask for a smaller result (resize, thumbnail) and try again.',
  too_many_pixels: 'Resize the photo and try again.',
  image_side_too_large: 'Resize the photo and try again.',
  deleted: 'Upload it again to start over.',
};

const state = {
  limits: { ...DEFAULT_LIMITS },
  graceSeconds: 30,
  jobs: [],
};

/** "the image is damaged" -> "The image is damaged." */
function sentence(msg) {
  const s = String(msg || '').trim();
  if (!s) return '';
  const t = s[0].toUpperCase() + s.slice(1);
  return /[.!?]$/.test(t) ? t : t + '.';
}

function showView(name) {
  $('upload-view').hidden = name !== 'upload';
  $('jobs-view').hidden = name !== 'jobs';
  document.body.dataset.view = name;
}

function setMessage(el, lines) {
  el.replaceChildren();
  const list = [].concat(lines).filter(Boolean);
  for (const line of list) {
    const p = document.createElement('p');
    p.textContent = line;
    el.append(p);
  }
  el.hidden = list.length === 0;
}

/** The quality of the page's "WebP, lossy" choice. */
const LOSSY_WEBP_QUALITY = 80;

/** The processing options chosen on the page, as form fields. */
function chosenOptions() {
  // 'webp-lossy' is WebP at a quality: lossy colour, exact alpha, the smallest files.
  const choice = $('opt-format').value;
  const quality = choice === 'webp-lossy' ? LOSSY_WEBP_QUALITY : null;
  const format = quality ? 'webp' : choice;
  const solid = $('opt-solid').checked || format === 'jpeg';
  const remove = $('opt-task').value === 'remove';
  const mask = $('opt-mask').checked;
  const bg = solid && !mask ? $('opt-color').value : null;
  const width = parseInt($('opt-width').value, 10);
  const filter = $('opt-filter').value;
  const text = $('opt-watermark').value.trim();
  if (remove && !width && !filter && !text) {
    return { model: $('opt-model').value, format, quality, mask_only: mask, crop: $('opt-crop').checked, bg_color: bg };
  }
  // Anything more is a pipeline of operations (the `op` form fields).
  const op = [];
  if (remove) {
    let rb = `remove_background:model=${$('opt-model').value}`;
    if (mask) rb += ',mask_only=true';
    if (bg) rb += `,bg_color=${bg}`;
    op.push(rb);
    if ($('opt-crop').checked) op.push('crop_to_subject');
  }
  if (filter) op.push(`filter:${filter}`);
  if (width > 0) op.push(`resize:width=${width}`);
  if (text) op.push(`watermark:text=${text},position=bottom_right,opacity=0.6`);
  op.push(`encode:format=${format}` + (quality ? `,quality=${quality}` : ''));
  return { op };
}

function updateTitle() {
  const live = state.jobs.filter((j) => j.view === 'waiting').length;
  document.title = (live ? `(${live} working) ` : '') + 'BackLess — remove the background from a photo';
  offerNotifications();
}

function notify(title, body, tag) {
  if (!('Notification' in window) || Notification.permission !== 'granted') return;
  if (document.visibilityState !== 'hidden') return;
  try {
    const n = new Notification(title, { body, tag, icon: '/static/favicon.svg' });
    n.onclick = () => { window.focus(); n.close(); };
  } catch (_) { /* some platforms only allow notifications from a service worker */ }
}

/** One photo on its way: upload, live stages, then the result or the failure. */
class Job {
  constructor(file, options, displayName) {
    this.file = file;
    this.options = options;
    this.displayName = displayName;
    this.job = null;
    this.source = null;
    this.view = 'waiting';
    this.stage = null;
    this.seq = 0;           // event id of the stage shown as current
    this.t0 = Date.now();   // when the upload began, kept in step with the server's elapsed_ms
    this.uploadMs = 0;      // how long the upload took (the server's clock starts after it)
    this.timer = null;
    this.beforeUrl = URL.createObjectURL(file);
    this.afterUrl = null;
    this.recovering = false;
    this.closed = false;

    const node = $('job-template').content.firstElementChild.cloneNode(true);
    this.el = node;
    this.q = (sel) => node.querySelector(sel);
    this.q('.job-name').textContent = displayName;
    const preview = this.q('.preview');
    preview.src = this.beforeUrl;
    preview.alt = `${displayName}, being processed`;
    this.q('.cancel').addEventListener('click', () => this.cancel());
    this.q('.retry').addEventListener('click', () => this.retry());
    const slider = this.q('.slider');
    slider.setAttribute('aria-label', `Compare ${displayName} before and after: share of the original shown`);
    slider.addEventListener('input', () => this.q('.compare').style.setProperty('--pos', slider.value + '%'));
  }

  setView(view) {
    this.view = view;
    this.el.dataset.view = view;
    this.q('.job-waiting').hidden = view !== 'waiting';
    this.q('.job-failed').hidden = view !== 'failed';
    this.q('.job-result').hidden = view !== 'result';
    updateTitle();
  }

  announce(text) { this.q('.status').textContent = text; }

  tick() {
    this.q('.elapsed-value').textContent = ((Date.now() - this.t0) / 1000).toFixed(1);
  }

  startTimer() {
    clearInterval(this.timer);
    this.timer = setInterval(() => this.tick(), 100);
    this.tick();
  }

  stopTimer() { clearInterval(this.timer); this.timer = null; this.tick(); }

  /** The progress list: the stages the server says this job reports, in order. */
  buildStages(job) {
    const list = this.q('.stages');
    list.replaceChildren();
    for (const { seq, stage, operation } of job.stages || []) {
      const op = operation === undefined || operation === null ? '' : (job.pipeline || [])[operation] || '';
      let label = LABELS[stage] || stage;
      if (stage === 'encoding') label += ' as ' + (op.match(/format=(\w+)/) || [, 'PNG'])[1].toUpperCase();
      if (stage === 'filtering') label += ' (' + op.slice(7).split('=')[0] + ')';
      const li = document.createElement('li');
      li.dataset.stage = stage;
      li.dataset.seq = String(seq);
      li.innerHTML = '<span class="stage-label"></span> <span class="stage-time"></span>';
      li.querySelector('.stage-label').textContent = label;
      list.append(li);
    }
  }

  /** Show the stage with event id `seq` as current; earlier ones as done. Never goes backwards. */
  mark(stage, elapsedMs, seq) {
    const li = seq === undefined
      ? this.q(`.stages [data-stage="${stage}"]`)
      : this.q(`.stages [data-seq="${seq}"]`);
    if (!li) return;
    seq = Number(li.dataset.seq);
    if (typeof elapsedMs === 'number') {
      // The server counts from the job's creation, i.e. the end of the upload; the page counts
      // from when the upload began.
      const ms = elapsedMs + this.uploadMs;
      this.t0 = Date.now() - ms;
      if (li.dataset.seen !== 'true') {
        li.querySelector('.stage-time').textContent = (ms / 1000).toFixed(1) + ' s';
        li.dataset.seen = 'true';
      }
    }
    if (this.seq && this.seq > seq) return;
    this.seq = seq;
    this.stage = stage;
    for (const item of this.q('.stages').children) {
      const s = Number(item.dataset.seq);
      const done = s < seq || stage === 'done';
      item.classList.toggle('done', done);
      item.classList.toggle('active', s === seq && !done);
      if (s === seq) item.setAttribute('aria-current', 'step'); else item.removeAttribute('aria-current');
    }
    const label = li.querySelector('.stage-label').textContent;
    this.announce(`${this.displayName}: ${label}`);
  }

  async upload() {
    this.setView('waiting');
    this.t0 = Date.now();
    this.startTimer();
    this.mark('uploaded'); // shown as under way until the server has it
    this.announce(`${this.displayName}: uploading`);
    const fd = new FormData();
    fd.append('file', this.file, this.file.name || 'pasted.png');
    for (const [k, v] of Object.entries(this.options)) {
      if (Array.isArray(v)) for (const item of v) fd.append(k, item);
      else if (v !== null && v !== undefined) fd.append(k, String(v));
    }
    fd.append('name', this.displayName);
    for (let attempt = 0; ; attempt++) {
      let res;
      try {
        res = await fetch('/v1/jobs', { method: 'POST', body: fd, credentials: 'same-origin' });
      } catch (_) {
        return this.fail('network', 'Could not reach the server. Check your connection and try again.');
      }
      if (res.ok && this.closed) {
        // Cancelled while uploading: nobody will watch this job, so delete it now.
        const { job } = await res.json();
        fetch('/v1/jobs/' + job.id, { method: 'DELETE', credentials: 'same-origin' }).catch(() => {});
        return;
      }
      if (this.closed) return;
      if (res.ok) {
        this.job = (await res.json()).job;
        this.el.dataset.jobId = this.job.id;
        this.uploadMs = Date.now() - this.t0;
        this.buildStages(this.job);
        this.mark('uploaded', 0);
        this.listen();
        return;
      }
      let body = {};
      try { body = await res.json(); } catch (_) { /* not JSON */ }
      if (res.status === 429 && attempt < 60) {
        // Too many of our jobs are still running: wait for a free slot.
        this.announce(`${this.displayName}: waiting for a free slot`);
        this.q('.connection').textContent = 'Waiting for one of your other photos to finish…';
        this.q('.connection').hidden = false;
        await new Promise((r) => setTimeout(r, 2000));
        this.q('.connection').hidden = true;
        if (this.closed) return;
        continue;
      }
      return this.fail(body.code || 'http_' + res.status, body.message || `Upload failed (HTTP ${res.status}).`);
    }
  }

  /** Follow the job's event stream; EventSource reconnects by itself with Last-Event-ID. */
  listen() {
    if (this.source) this.source.close();
    const source = new EventSource(this.job.events_url + '?hold=true');
    this.source = source;
    const onEvent = (ev) => {
      let data;
      try { data = JSON.parse(ev.data); } catch (_) { return; }
      this.onStage(data);
    };
    const names = new Set((this.job.stages || []).map((s) => s.stage).concat(['failed']));
    for (const s of names) source.addEventListener(s, onEvent);
    source.addEventListener('open', () => {
      clearTimeout(this.lostTimer);
      this.lostTimer = null;
      this.q('.connection').hidden = true;
      if (this.lostConnection) {
        this.lostConnection = false;
        this.resync();
      }
    });
    source.addEventListener('error', () => {
      if (this.closed || source !== this.source) return;
      this.lostConnection = true;
      // The server ends long streams now and then and the browser reconnects within seconds:
      // say something only if one outage lasts 5 s (a reconnect clears the timer).
      if (!this.lostTimer) {
        this.lostTimer = setTimeout(() => {
          this.lostTimer = null;
          if (!this.lostConnection || this.closed || source !== this.source) return;
          if (this.view === 'waiting') {
            this.q('.connection').textContent = 'Connection lost, reconnecting…';
            this.q('.connection').hidden = false;
          }
        }, 5000);
      }
      // CONNECTING: the browser retries by itself. CLOSED: it gave up (an error status); ask the
      // API what became of the job and start a new stream.
      if (source.readyState === EventSource.CLOSED) this.recover();
    });
  }

  onStage(data) {
    if (this.closed) return;
    if (data.stage === 'failed') {
      if (this.view === 'result') return; // already have the result; the server let it go
      return this.fail(data.error_code, data.message || 'Processing failed.', data.elapsed_ms);
    }
    this.mark(data.stage, data.elapsed_ms, data.seq);
    if (data.stage === 'done' && this.view === 'waiting' && !this.fetching) this.finish();
  }

  /** After a reconnect: read the record in case an event fell between two connections. */
  async resync() {
    if (!this.job || this.closed) return;
    try {
      const res = await fetch('/v1/jobs/' + this.job.id, { credentials: 'same-origin' });
      if (res.status === 404) {
        if (this.view === 'waiting') this.fail('deleted', 'This photo is no longer on the server.');
        return;
      }
      if (!res.ok) return;
      const job = await res.json();
      if (job.state === 'done') this.onStage({ stage: 'done' });
      else if (job.state === 'failed') this.onStage({ stage: 'failed', error_code: job.error_code, message: job.error_message });
    } catch (_) { /* still offline; the stream will retry */ }
  }

  /** The browser gave up on the stream: poll the job, then open a new stream. */
  async recover() {
    if (this.recovering) return;
    this.recovering = true;
    for (let delay = 1000; !this.closed; delay = Math.min(delay * 2, 10000)) {
      await new Promise((r) => setTimeout(r, delay));
      if (this.closed) break;
      let res;
      try { res = await fetch('/v1/jobs/' + this.job.id, { credentials: 'same-origin' }); } catch (_) { continue; }
      if (res.status === 404) {
        if (this.view === 'waiting') this.fail('deleted', 'This photo is no longer on the server.');
        break;
      }
      if (!res.ok) continue;
      this.listen();
      this.resync();
      break;
    }
    this.recovering = false;
  }

  async finish() {
    this.fetching = true;
    let blob = null;
    for (let attempt = 0; attempt < 5 && !blob && !this.closed; attempt++) {
      if (attempt) await new Promise((r) => setTimeout(r, 1000 * attempt));
      try {
        const res = await fetch('/v1/jobs/' + this.job.id + '/result', { credentials: 'same-origin' });
        if (res.ok) blob = await res.blob();
        else if (res.status === 404) break;
      } catch (_) { /* retry */ }
    }
    this.fetching = false;
    if (this.closed) return;
    if (!blob) return this.fail('result_unavailable', 'The result could not be downloaded.');
    this.stopTimer();
    this.afterUrl = URL.createObjectURL(blob);
    const name = this.job.download_name || `${this.displayName}-nobg.png`;
    const after = this.q('.after');
    const before = this.q('.before');
    after.alt = `${this.displayName} with the background removed`;
    before.alt = `${this.displayName}, original`;
    before.src = this.beforeUrl;
    after.src = this.afterUrl;
    // A crop changes the frame: show both side by side instead of over each other.
    this.q('.compare').classList.toggle('side', Boolean(this.job.options && this.job.options.crop));
    const a = this.q('.download');
    a.href = this.afterUrl;
    a.download = name;
    a.textContent = `Download ${name}`;
    this.setView('result');
    this.announce(`${this.displayName}: done`);
    notify('Background removed', `${this.displayName} is ready to download.`, this.job.id);
  }

  fail(code, message, elapsedMs) {
    this.stopTimer();
    if (typeof elapsedMs === 'number') this.t0 = Date.now() - elapsedMs - this.uploadMs;
    const lines = [sentence(message)];
    if (HINTS[code]) lines.push(HINTS[code]);
    const p = this.q('.failure');
    p.textContent = lines.join(' ');
    this.el.dataset.errorCode = code || '';
    this.setView('failed');
    notify('Could not remove the background', `${this.displayName}: ${sentence(message)}`, this.job ? this.job.id : undefined);
  }

  /** Start this photo again as a new job (with the options now chosen); the old one is deleted. */
  async retry() {
    const old = this.job;
    this.dispose();
    if (old) fetch('/v1/jobs/' + old.id, { method: 'DELETE', credentials: 'same-origin' }).catch(() => {});
    const again = new Job(this.file, this.options, this.displayName);
    const i = state.jobs.indexOf(this);
    state.jobs[i] = again;
    this.el.replaceWith(again.el);
    again.q('.job-name').tabIndex = -1;
    again.q('.job-name').focus();
    await again.upload();
  }

  async cancel() {
    const old = this.job;
    this.close();
    if (old) {
      try { await fetch('/v1/jobs/' + old.id, { method: 'DELETE', credentials: 'same-origin' }); } catch (_) { /* gone anyway */ }
    }
    state.jobs = state.jobs.filter((j) => j !== this);
    this.el.remove();
    if (state.jobs.length === 0) startOver();
    else updateTitle();
  }

  /** Stop following the job; the server deletes it after the grace window. */
  close() {
    this.closed = true;
    if (this.source) this.source.close();
    this.source = null;
    clearInterval(this.timer);
    // Keep the object URLs alive while the card is on the page (the download needs them).
  }

  dispose() {
    this.close();
    URL.revokeObjectURL(this.beforeUrl);
    if (this.afterUrl) URL.revokeObjectURL(this.afterUrl);
  }
}

function startOver() {
  for (const j of state.jobs) j.dispose();
  state.jobs = [];
  $('jobs').replaceChildren();
  $('file').value = '';
  setMessage($('jobs-notice'), []);
  setMessage($('upload-error'), []);
  updateTitle();
  showView('upload');
  $('file').focus();
}

/** Check the files, start a job for each acceptable one (at most MAX_AT_ONCE). */
async function accept(files, named) {
  files = Array.from(files || []);
  if (files.length === 0) return;
  const problems = [];
  if (files.length > MAX_AT_ONCE) {
    problems.push(`Up to ${MAX_AT_ONCE} photos at a time: ${files.length - MAX_AT_ONCE} were left out.`);
    files = files.slice(0, MAX_AT_ONCE);
  }
  const ok = [];
  for (const f of files) {
    const problem = await checkFile(f, state.limits);
    if (problem) problems.push(problem); else ok.push(f);
  }
  if (ok.length === 0) {
    setMessage($('upload-error'), problems);
    $('file').value = '';
    return;
  }
  setMessage($('upload-error'), []);
  for (const j of state.jobs) j.dispose();
  state.jobs = [];
  $('jobs').replaceChildren();
  setMessage($('jobs-notice'), problems);
  const options = chosenOptions();
  for (const f of ok) {
    const name = named || (f.name ? f.name.replace(/\.[^.]+$/, '') || f.name : 'pasted-image');
    const job = new Job(f, options, name);
    state.jobs.push(job);
    $('jobs').append(job.el);
  }
  $('jobs-title').textContent = ok.length === 1 ? 'Your photo' : `Your ${ok.length} photos`;
  offerNotifications();
  showView('jobs');
  $('jobs-title').focus();
  // One upload at a time keeps the connections free for the event streams.
  for (const job of state.jobs.slice()) await job.upload();
}

/** Offer notifications while something is still working and the browser has not been asked. */
function offerNotifications() {
  const can = 'Notification' in window && Notification.permission === 'default';
  $('notify-offer').hidden = !can || !state.jobs.some((j) => j.view === 'waiting');
}

/** Options that cannot apply together are disabled, and say so. */
function syncOptions() {
  const jpeg = $('opt-format').value === 'jpeg';
  const edit = $('opt-task').value === 'edit';
  for (const id of ['opt-model', 'opt-crop', 'opt-mask']) $(id).disabled = edit;
  const mask = $('opt-mask').checked && !edit;
  if (jpeg && $('opt-transparent').checked) $('opt-solid').checked = true;
  $('opt-transparent').disabled = jpeg;
  $('opt-bg').disabled = mask || edit;
  $('opt-color').disabled = mask || !$('opt-solid').checked;
}

async function loadConfig() {
  try {
    const res = await fetch('/v1/config', { credentials: 'same-origin' });
    if (!res.ok) return;
    const cfg = await res.json();
    state.limits = {
      max_upload_bytes: cfg.max_upload_bytes,
      max_pixels: cfg.max_pixels,
      max_side: cfg.max_side,
    };
    state.graceSeconds = cfg.grace_seconds;
    for (const m of cfg.models || []) {
      const opt = $('opt-model').querySelector(`option[value="${m.id}"]`);
      if (!opt) continue;
      opt.disabled = !m.available;
      if (!m.available && !opt.textContent.includes('not installed')) opt.textContent += ' — not installed here';
    }
    const sel = $('opt-model');
    if (sel.selectedOptions[0] && sel.selectedOptions[0].disabled) {
      const first = Array.from(sel.options).find((o) => !o.disabled);
      if (first) sel.value = first.value;
    }
  } catch (_) { /* keep the defaults; the server checks anyway */ }
  $('limits').textContent = `PNG, JPEG, WebP, GIF, BMP or TIFF · up to ${formatBytes(state.limits.max_upload_bytes)} ` +
    `and ${formatMegapixels(state.limits.max_pixels)} each · ${MAX_AT_ONCE} at a time`;
  const g = state.graceSeconds;
  $('grace-text').textContent = g === 1 ? '1 second' : g < 120 ? `${g} seconds` : `${Math.round(g / 60)} minutes`;
  document.body.dataset.ready = 'true';
}

function init() {
  const drop = $('drop');
  $('file').addEventListener('change', () => accept($('file').files));
  // Dropping anywhere on the upload view works; elsewhere the browser must not open the file.
  let depth = 0;
  document.addEventListener('dragenter', (e) => {
    if ($('upload-view').hidden) return;
    e.preventDefault();
    depth++;
    drop.classList.add('over');
  });
  document.addEventListener('dragleave', () => {
    depth = Math.max(0, depth - 1);
    if (depth === 0) drop.classList.remove('over');
  });
  document.addEventListener('dragover', (e) => e.preventDefault());
  document.addEventListener('drop', (e) => {
    e.preventDefault();
    depth = 0;
    drop.classList.remove('over');
    if ($('upload-view').hidden) return;
    if (e.dataTransfer && e.dataTransfer.files.length) accept(e.dataTransfer.files);
  });
  document.addEventListener('paste', (e) => {
    if ($('upload-view').hidden) return;
    const files = e.clipboardData ? Array.from(e.clipboardData.files) : [];
    if (files.length) {
      e.preventDefault();
      // Browsers name a pasted bitmap "image.png"; call it what it is.
      const generic = files.length === 1 && (!files[0].name || /^image\.\w+$/.test(files[0].name));
      accept(files, generic ? 'pasted-image' : undefined);
    }
  });
  for (const id of ['opt-task', 'opt-format', 'opt-mask', 'opt-transparent', 'opt-solid']) $(id).addEventListener('change', syncOptions);
  $('again').addEventListener('click', startOver);
  $('notify').addEventListener('click', async () => {
    try { await Notification.requestPermission(); } catch (_) { /* old API shape */ }
    offerNotifications();
  });
  syncOptions();
  showView('upload');
  loadConfig();
}

init();
