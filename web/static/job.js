// One photo on its way: upload, live stages over server-sent events, then the result or the
// failure.

import { $, notify, sentence, startOver, state, updateTitle } from './page.js';

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

/** One photo on its way: upload, live stages, then the result or the failure. */
export class Job {
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
