// BackLess page: pick, drop or paste photos; each becomes a job whose stages arrive live over
// server-sent events; the result is shown over a checkerboard with a before/after slider.
//
// A job's files live on the server while this page holds its event stream open (`?hold=true`);
// closing the page (or starting over) closes the stream and the server deletes the job after its
// grace window (web/src/lifecycle.rs).
import { DEFAULT_LIMITS, checkFile, formatBytes, formatMegapixels } from './checks.js';
import { Job } from './job.js';
import { chosenOptions, showModels, syncOptions } from './options.js';
import { $, offerNotifications, setMessage, showView, startOver, state } from './page.js';

state.limits = { ...DEFAULT_LIMITS };

/** Check the files, start a job for each acceptable one (at most the batch size). */
async function accept(files, named) {
  files = Array.from(files || []);
  if (files.length === 0) return;
  const problems = [];
  const batch = state.batchSize;
  if (files.length > batch) {
    problems.push(`Up to ${batch} photos at a time: ${files.length - batch} were left out.`);
    files = files.slice(0, batch);
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
    state.batchSize = cfg.batch_size;
    showModels(cfg.models || []);
  } catch (_) { /* keep the defaults; the server checks anyway */ }
  $('limits').textContent = `PNG, JPEG, WebP, GIF, BMP or TIFF · up to ${formatBytes(state.limits.max_upload_bytes)} ` +
    `and ${formatMegapixels(state.limits.max_pixels)} each · ${state.batchSize} at a time`;
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
