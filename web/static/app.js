// BackLess page: upload, live progress over server-sent events, result.
'use strict';

(function () {
  const $ = (id) => document.getElementById(id);
  const views = { upload: $('upload-view'), wait: $('wait-view'), result: $('result-view') };
  const STAGES = ['uploaded', 'queued', 'received', 'segmenting', 'compositing', 'stored', 'done'];

  let current = null;      // { job, source, timer, beforeUrl, afterUrl }

  function show(name) {
    for (const [k, el] of Object.entries(views)) el.hidden = k !== name;
    const heading = views[name].querySelector('h2');
    if (heading) { heading.tabIndex = -1; heading.focus(); }
  }

  function showError(el, msg) {
    el.textContent = msg;
    el.hidden = !msg;
  }

  function reset() {
    if (current) {
      if (current.source) current.source.close();
      clearInterval(current.timer);
      if (current.beforeUrl) URL.revokeObjectURL(current.beforeUrl);
      if (current.afterUrl) URL.revokeObjectURL(current.afterUrl);
    }
    current = null;
    $('file').value = '';
    for (const li of $('stages').children) li.className = '';
    showError($('wait-error'), '');
    showError($('upload-error'), '');
    show('upload');
  }

  function options(fd) {
    fd.append('model', $('opt-model').value);
    fd.append('format', $('opt-format').value);
    fd.append('mask_only', $('opt-mask').checked ? 'true' : 'false');
    fd.append('crop', $('opt-crop').checked ? 'true' : 'false');
    if ($('opt-fill').checked) fd.append('bg_color', $('opt-color').value);
  }

  async function upload(file) {
    showError($('upload-error'), '');
    if (!file) return;
    const fd = new FormData();
    fd.append('file', file, file.name || 'pasted.png');
    options(fd);
    document.body.classList.add('busy');
    let res;
    try {
      res = await fetch('/v1/jobs', { method: 'POST', body: fd, credentials: 'same-origin' });
    } catch (e) {
      showError($('upload-error'), 'Could not reach the server. Check your connection and try again.');
      return;
    } finally {
      document.body.classList.remove('busy');
    }
    if (!res.ok) {
      let msg = 'Upload failed (' + res.status + ').';
      try { const body = await res.json(); if (body && body.message) msg = body.message; } catch (_) { /* not JSON */ }
      showError($('upload-error'), msg);
      return;
    }
    const created = await res.json();
    watch(created.job, file);
  }

  function markStage(stage) {
    const idx = STAGES.indexOf(stage);
    for (const li of $('stages').children) {
      const i = STAGES.indexOf(li.dataset.stage);
      li.className = i < idx ? 'done' : i === idx ? (stage === 'done' ? 'done' : 'active') : '';
      if (i === idx) li.setAttribute('aria-current', 'step'); else li.removeAttribute('aria-current');
    }
  }

  function watch(job, file) {
    const started = Date.now();
    current = { job, source: null, timer: null, beforeUrl: URL.createObjectURL(file), afterUrl: null };
    $('wait-name').textContent = job.name;
    $('wait-preview').src = current.beforeUrl;
    markStage('uploaded');
    show('wait');
    current.timer = setInterval(() => {
      $('elapsed').textContent = ((Date.now() - started) / 1000).toFixed(1);
    }, 100);

    const source = new EventSource(job.events_url);
    current.source = source;
    const onEvent = (ev) => {
      let data;
      try { data = JSON.parse(ev.data); } catch (_) { return; }
      if (data.stage === 'failed') {
        source.close();
        clearInterval(current.timer);
        showError($('wait-error'), data.message || 'Processing failed.');
        return;
      }
      markStage(data.stage);
      if (data.stage === 'done') {
        source.close();
        clearInterval(current.timer);
        finish(job);
      }
    };
    for (const s of STAGES.concat(['failed'])) source.addEventListener(s, onEvent);
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {
        showError($('wait-error'), 'Lost the connection to the server.');
      }
    };
  }

  async function finish(job) {
    let res;
    try {
      res = await fetch('/v1/jobs/' + job.id + '/result', { credentials: 'same-origin' });
    } catch (_) {
      showError($('wait-error'), 'Could not download the result.');
      return;
    }
    if (!res.ok) {
      showError($('wait-error'), 'Could not download the result (' + res.status + ').');
      return;
    }
    const blob = await res.blob();
    current.afterUrl = URL.createObjectURL(blob);
    $('before').src = current.beforeUrl;
    $('after').src = current.afterUrl;
    const a = $('download');
    a.href = current.afterUrl;
    a.download = job.download_name || (job.name + '-nobg.png');
    a.textContent = 'Download ' + a.download;
    show('result');
  }

  async function cancel() {
    if (current && current.job) {
      try {
        await fetch('/v1/jobs/' + current.job.id, { method: 'DELETE', credentials: 'same-origin' });
      } catch (_) { /* nothing to do */ }
    }
    reset();
  }

  function init() {
    const drop = $('drop');
    $('file').addEventListener('change', () => upload($('file').files[0]));
    ['dragenter', 'dragover'].forEach((t) => drop.addEventListener(t, (e) => {
      e.preventDefault();
      drop.classList.add('over');
    }));
    ['dragleave', 'drop'].forEach((t) => drop.addEventListener(t, () => drop.classList.remove('over')));
    drop.addEventListener('drop', (e) => {
      e.preventDefault();
      const f = e.dataTransfer && e.dataTransfer.files[0];
      if (f) upload(f);
    });
    document.addEventListener('paste', (e) => {
      if (views.upload.hidden) return;
      const items = (e.clipboardData && e.clipboardData.files) || [];
      if (items.length) { e.preventDefault(); upload(items[0]); }
    });
    $('opt-fill').addEventListener('change', () => { $('opt-color').disabled = !$('opt-fill').checked; });
    $('opt-format').addEventListener('change', () => {
      if ($('opt-format').value === 'jpeg') { $('opt-fill').checked = true; $('opt-color').disabled = false; }
    });
    $('again').addEventListener('click', reset);
    $('cancel').addEventListener('click', cancel);
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init); else init();
})();
